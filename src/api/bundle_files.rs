//! The serving side of `BundleFiles.FetchBundleFile` (internal port): a
//! peer copying a staged bundle asks for one file at a time and gets it in
//! chunks. Only `manifest.json` and files the bundle's manifest lists can
//! be read, by bundle-relative path, from a version this node holds.
//!
//! Owns: request checks and streaming. Must not touch: which directory
//! holds a version (`Node::bundle_dir_of`) or the fetching side
//! (`node::bundle_fetch`).

use super::error::grpc_status;
use crate::bundle::manifest::MANIFEST_FILE;
use crate::bundle::Bundle;
use crate::node::bundle_fetch::check_rel_path;
use crate::node::Node;
use crate::proto::data::bundle_files_server::{BundleFiles, BundleFilesServer};
use crate::proto::data::{BundleFileChunk, FetchBundleFileRequest};
use crate::service::types::ServiceError;
use std::io::{Read, Seek, SeekFrom};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Bytes per streamed chunk.
const CHUNK_BYTES: usize = 256 << 10;

pub struct BundleFilesService {
    node: Node,
}

pub fn bundle_files_service(
    node: Node,
    max_message_bytes: usize,
) -> BundleFilesServer<BundleFilesService> {
    BundleFilesServer::new(BundleFilesService { node })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes)
}

#[tonic::async_trait]
impl BundleFiles for BundleFilesService {
    type FetchBundleFileStream = ReceiverStream<Result<BundleFileChunk, Status>>;

    async fn fetch_bundle_file(
        &self,
        request: Request<FetchBundleFileRequest>,
    ) -> Result<Response<Self::FetchBundleFileStream>, Status> {
        let r = request.into_inner();
        check_rel_path(&r.path)
            .map_err(|e| grpc_status(&ServiceError::InvalidArgument(e.to_string())))?;
        let not_found = |m: String| grpc_status(&ServiceError::NotFound(m));
        let dir = self.node.bundle_dir_of(&r.version).ok_or_else(|| {
            not_found(format!(
                "node {} has no bundle of version {:?}",
                self.node.config().node.id,
                r.version
            ))
        })?;
        let (version, rel) = (r.version.clone(), r.path.clone());
        let path = tokio::task::spawn_blocking(move || {
            let bundle = Bundle::open_unverified(&dir).map_err(|e| {
                ServiceError::NotFound(format!("bundle {version} is not readable here: {e}"))
            })?;
            if rel != MANIFEST_FILE && bundle.manifest().file(&rel).is_none() {
                return Err(ServiceError::NotFound(format!(
                    "{rel} is not a file of bundle {version}"
                )));
            }
            Ok(dir.join(&rel))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| grpc_status(&e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let offset = r.offset;
        // a blocking reader feeds the stream; it stops when the peer hangs up
        tokio::task::spawn_blocking(move || {
            let send_err = |e: String| {
                let _ = tx.blocking_send(Err(Status::internal(e)));
            };
            let mut f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => return send_err(format!("cannot open {}: {e}", path.display())),
            };
            let total = match f.metadata() {
                Ok(m) => m.len(),
                Err(e) => return send_err(format!("cannot stat {}: {e}", path.display())),
            };
            if offset > total {
                let _ = tx.blocking_send(Err(Status::out_of_range(format!(
                    "offset {offset} is past the end ({total} bytes)"
                ))));
                return;
            }
            if let Err(e) = f.seek(SeekFrom::Start(offset)) {
                return send_err(format!("cannot seek {}: {e}", path.display()));
            }
            let mut at = offset;
            let mut buf = vec![0u8; CHUNK_BYTES];
            loop {
                let n = match f.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => return send_err(format!("reading {}: {e}", path.display())),
                };
                let chunk = BundleFileChunk {
                    offset: at,
                    data: buf[..n].to_vec(),
                    total_bytes: total,
                };
                at += n as u64;
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
