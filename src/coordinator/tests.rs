//! `recommend` end to end against fake shard clients (the one place this
//! module fakes anything: which copy answers and how is `routing`'s, and a
//! fake lets a test choose a shard that fails or never answers). The model,
//! catalogue, user readers and rank workers are the real ones, over a tiny
//! bundle written here.

use super::{recommend, RecommendEnv, Serving};
use crate::bundle::{
    BundleWriter, FeatureSchemaRef, IndexParams, ItemTable, ManifestFields, UserTable, WriteOptions,
};
use crate::catalog::Catalog;
use crate::config::StageBudget;
use crate::features::{FeatureSchema, StateParams};
use crate::ids::shard_of;
use crate::matrix::Matrix;
use crate::model::ServingModel;
use crate::ranking::rerank::RerankConfig;
use crate::ranking::score::{trained_test_ranker, Cascade, Ranker};
use crate::ranking::worker::start_rank_workers;
use crate::ranking::RankError;
use crate::recall::RecallConfig;
use crate::routing::{
    CallContext, CopyFailure, SearchSpec, ShardCallError, ShardClient, VectorsResult,
};
use crate::service::types::{Degraded, Recommendation};
use crate::service::validate::ValidRecommend;
use crate::shard::{KeyedVectors, SearchResult};
use crate::training::trainer::sections;
use crate::userstate::UserStateActor;
use futures::future::{BoxFuture, FutureExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DIM: usize = 4;
const ITEMS: usize = 24;
const USER: &str = "u1";

fn item_vector(i: usize) -> Vec<f32> {
    vec![1.0, i as f32 * 0.1, (i % 3) as f32 * 0.2, 0.5]
}

/// A bundle of `ITEMS` items (no categories; `ranker`, or rank fusion) and
/// one user the model has a vector for, loaded as the node would load it.
fn tiny_model(dir: &std::path::Path, ranker: Option<&Ranker>) -> Arc<ServingModel> {
    let out = dir.join("bundle");
    let items = ItemTable::from_ids((0..ITEMS).map(|i| format!("i{i}")).collect());
    let vectors: Vec<f32> = (0..ITEMS).flat_map(item_vector).collect();
    let vectors = Matrix::from_vec(ITEMS, DIM, vectors).unwrap();
    let mut w = BundleWriter::create(
        &out,
        WriteOptions {
            force: false,
            index_threads: 1,
        },
    )
    .unwrap();
    w.put_items(&items).unwrap();
    w.put_item_vectors(&items, &vectors, 2, IndexParams::default())
        .unwrap();
    let users = UserTable {
        ids: vec![USER.to_string()],
        occupation_names: Vec::new(),
    };
    w.put_users(
        &users,
        &Matrix::from_vec(1, DIM, vec![1.0, 0.5, 0.0, 0.0]).unwrap(),
    )
    .unwrap();
    if let Some(ranker) = ranker {
        w.put_section(sections::RANKER, ranker).unwrap();
    }
    let schema = FeatureSchema::current();
    w.finish(ManifestFields {
        model_version: "v-test".into(),
        created_at_unix: Some(0),
        input_fingerprint: "test".into(),
        feature_schema: FeatureSchemaRef {
            version: schema.version,
            hash: schema.hash,
        },
        components: Vec::new(),
        metrics: serde_json::json!({}),
        params: serde_json::json!({}),
    })
    .unwrap();
    let model = ServingModel::load(&out).unwrap().model;
    assert_eq!(
        model.ranker.kind(),
        ranker.map_or("rank-fusion", Ranker::kind)
    );
    Arc::new(model)
}

/// How a fake shard answers.
#[derive(Clone)]
enum Answer {
    /// Its items by dot product with the query, and their vectors.
    Hits,
    Fails(&'static str),
    /// Never: the call stays pending.
    Never,
}

/// What a vectors fetch carried: (request id, deadline).
type Fetch = (Option<Arc<str>>, Option<Instant>);

/// One shard of `n`, holding the items `shard_of` puts on it.
struct FakeShard {
    shard: u32,
    items: Vec<(u64, Vec<f32>)>,
    answer: Answer,
    /// The request id and deadline of every vectors fetch it was asked.
    fetches: Arc<std::sync::Mutex<Vec<Fetch>>>,
}

impl FakeShard {
    fn client(model: &ServingModel, shard: u32, n: u32, answer: Answer) -> Arc<dyn ShardClient> {
        Arc::new(Self::new(model, shard, n, answer))
    }

    fn new(model: &ServingModel, shard: u32, n: u32, answer: Answer) -> FakeShard {
        let items = (0..ITEMS)
            .map(|i| (model.items.keys[i], item_vector(i)))
            .filter(|(k, _)| shard_of(*k, n) == shard)
            .collect();
        FakeShard {
            shard,
            items,
            answer,
            fetches: Default::default(),
        }
    }

    fn vectors_of(&self, keys: impl Fn(u64) -> bool) -> KeyedVectors {
        let mut out = KeyedVectors::with_capacity(DIM, self.items.len());
        for (k, v) in self.items.iter().filter(|(k, _)| keys(*k)) {
            out.push(*k, v);
        }
        out
    }

    fn answer<T: Send + 'static>(&self, ok: T) -> BoxFuture<'static, Result<T, ShardCallError>> {
        match self.answer {
            Answer::Hits => futures::future::ready(Ok(ok)).boxed(),
            Answer::Fails(reason) => futures::future::ready(Err(ShardCallError::Copy {
                shard: self.shard,
                node: Some(2),
                failure: CopyFailure::Local(reason.to_string()),
            }))
            .boxed(),
            Answer::Never => futures::future::pending().boxed(),
        }
    }
}

impl ShardClient for FakeShard {
    fn shard(&self) -> u32 {
        self.shard
    }

    fn search(
        &self,
        spec: SearchSpec,
        _ctx: CallContext,
    ) -> BoxFuture<'static, Result<SearchResult, ShardCallError>> {
        let dot = |v: &[f32]| v.iter().zip(spec.query.iter()).map(|(a, b)| a * b).sum();
        let mut hits: Vec<(u64, f32)> = self
            .items
            .iter()
            .filter(|(k, _)| !spec.exclude.contains(k))
            .map(|(k, v)| (*k, dot(v)))
            .collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1));
        hits.truncate(spec.k);
        let vectors = self.vectors_of(|k| hits.iter().any(|h| h.0 == k) || spec.fetch.contains(&k));
        self.answer(SearchResult {
            shard: self.shard,
            hits,
            vectors,
            cpu_micros: 0,
        })
    }

    fn vectors(&self, keys: Arc<[u64]>, ctx: CallContext) -> BoxFuture<'static, VectorsResult> {
        if let Ok(mut f) = self.fetches.lock() {
            f.push((ctx.request_id.clone(), ctx.deadline));
        }
        self.answer(self.vectors_of(|k| keys.contains(&k)))
    }
}

/// One request for `USER` to a node set up as the fields say.
struct Ask {
    /// One fake shard per entry.
    answers: Vec<Answer>,
    budget: StageBudget,
    batch_rows: usize,
    deadline_ms: u32,
    ranker: Option<Ranker>,
    cascade: Cascade,
}

impl Ask {
    fn shards(answers: &[Answer]) -> Ask {
        Ask {
            answers: answers.to_vec(),
            budget: StageBudget::default(),
            batch_rows: 512,
            deadline_ms: 2_000,
            ranker: None,
            cascade: Cascade::default(),
        }
    }

    /// Runs `recommend` in an actix system (the rank workers are a sync
    /// arbiter); the answer and how long it took.
    fn run(&self) -> (Recommendation, Duration) {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_model(dir.path(), self.ranker.as_ref());
        let n = self.answers.len() as u32;
        let shards = self
            .answers
            .iter()
            .enumerate()
            .map(|(s, a)| FakeShard::client(&model, s as u32, n, a.clone()))
            .collect();
        let serving = Arc::new(Serving {
            model: model.clone(),
            catalog: Arc::new(Catalog::new(model)),
            shards,
        });
        let req = ValidRecommend {
            user_id: USER.into(),
            k: ITEMS,
            deadline_ms: self.deadline_ms,
            exclude: Vec::new(),
            categories: Vec::new(),
            timestamp: Some(1_700_000_000),
            device: String::new(),
            seed: Some(7),
            request_id: None,
        };
        let (budget, batch_rows, cascade) = (self.budget, self.batch_rows, self.cascade);
        let (r, took) = actix::System::new().block_on(async move {
            let (_actor, reader) = UserStateActor::new(0, StateParams::default());
            let env = RecommendEnv {
                serving,
                users: Arc::new(crate::routing::UserStates::local_only(Arc::new(vec![
                    reader,
                ]))),
                rank: start_rank_workers(2),
                recall: RecallConfig::default(),
                rerank: RerankConfig::default(),
                budget,
                batch_rows,
                cascade,
            };
            let t0 = Instant::now();
            let r = recommend(env, req, "req-1".into()).await;
            (r, t0.elapsed())
        });
        (r.unwrap(), took)
    }
}

/// The items of the answer that came from the ANN path, as shard ids of `n`.
fn ann_shards(r: &Recommendation, n: u32) -> Vec<u32> {
    let mut out: Vec<u32> = r
        .items
        .iter()
        .filter(|i| i.sources.iter().any(|s| s == "ann"))
        .map(|i| shard_of(crate::ids::item_key(&i.item_id), n))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[test]
fn hits_from_every_shard_are_merged_with_full_coverage() {
    let (r, _) = Ask::shards(&[Answer::Hits, Answer::Hits]).run();
    assert_eq!(r.coverage, 1.0);
    assert!(r.degraded.is_empty(), "{:?}", r.degraded);
    assert_eq!(r.model_version, "v-test");
    assert_eq!(r.request_id, "req-1");
    // every item is on one of the shards and every one was an ANN hit
    assert_eq!(r.items.len(), ITEMS);
    assert!(r.items.iter().all(|i| i.sources.iter().any(|s| s == "ann")));
    assert_eq!(ann_shards(&r, 2), vec![0, 1]);
    assert!(r.items.windows(2).all(|w| w[0].score >= w[1].score));
    let stages: Vec<&str> = r.timings.iter().map(|t| t.stage.as_str()).collect();
    assert_eq!(stages, ["user", "recall", "rank", "rerank", "total"]);
}

#[test]
fn a_failing_shard_is_reported_once_and_the_rest_still_answer() {
    let answers = [
        Answer::Hits,
        Answer::Fails("connection refused"),
        Answer::Hits,
    ];
    let (r, _) = Ask::shards(&answers).run();
    assert!((r.coverage - 2.0 / 3.0).abs() < 1e-9, "{}", r.coverage);
    assert_eq!(
        r.degraded,
        vec![Degraded::ShardFailed(ShardCallError::Copy {
            shard: 1,
            node: Some(2),
            failure: CopyFailure::Local("connection refused".into())
        })]
    );
    assert_eq!(r.degraded[0].label(), "shard_failed");
    assert_eq!(
        r.degraded[0].to_string(),
        "shard 1: node 2: connection refused"
    );
    assert!(!r.items.is_empty());
    assert_eq!(ann_shards(&r, 3), vec![0, 2]);
}

#[test]
fn a_shard_that_never_answers_is_reported_by_the_deadline() {
    let deadline_ms = 300;
    let (r, took) = Ask {
        deadline_ms,
        ..Ask::shards(&[Answer::Hits, Answer::Never])
    }
    .run();
    // recall waits for the late shard until its share of the deadline ends
    // (user + recall = 60 %), no longer
    let recall_end = Duration::from_millis(deadline_ms as u64 * 6 / 10);
    assert!(took >= recall_end, "answered after {took:?}");
    assert!(
        took < Duration::from_millis(deadline_ms as u64 + 200),
        "answered after {took:?}"
    );
    assert_eq!(r.degraded, vec![Degraded::ShardDeadline { shard: 1 }]);
    assert_eq!(r.degraded[0].label(), "shard_deadline");
    assert_eq!(r.coverage, 0.5);
    assert_eq!(ann_shards(&r, 2), vec![0]);
}

#[test]
fn ranking_past_its_deadline_falls_back_to_rank_fusion_and_says_so() {
    // no time for the rank stage and more rows than one batch: the pool is
    // not asked, the recall order stands
    let budget = StageBudget {
        user: 0.0,
        recall: 0.0,
        rank: 0.0,
        rerank: 1.0,
    };
    let (r, _) = Ask {
        budget,
        batch_rows: 2,
        ..Ask::shards(&[Answer::Hits, Answer::Hits])
    }
    .run();
    assert_eq!(
        r.degraded,
        vec![Degraded::RankFallback(RankError::Deadline)]
    );
    assert_eq!(r.degraded[0].label(), "rank_deadline");
    assert_eq!(
        r.degraded[0].to_string(),
        "rank: deadline; ordered by recall rank fusion"
    );
    assert_eq!(r.coverage, 1.0);
    assert_eq!(r.items.len(), ITEMS);
    // rank fusion: the best ANN hit scores 1 / (60 + 0) at least
    assert!(
        r.items[0].score >= 1.0 / 60.0 - 1e-6,
        "{}",
        r.items[0].score
    );
}

#[test]
fn a_cascade_scored_on_the_pool_gives_the_answer_one_batch_gives() {
    let (ranker, _) = trained_test_ranker(3, 200, 30);
    let one_batch = Ask {
        ranker: Some(ranker),
        // 24 candidates: 5 trees on all, the other 25 on the best 8
        cascade: Cascade {
            first_trees: 5,
            keep: 8,
        },
        ..Ask::shards(&[Answer::Hits, Answer::Hits])
    };
    let (one, _) = one_batch.run();
    // batches of 3: both phases go out to the workers
    let (pooled, _) = Ask {
        batch_rows: 3,
        ..one_batch
    }
    .run();
    assert!(one.degraded.is_empty(), "{:?}", one.degraded);
    assert!(pooled.degraded.is_empty(), "{:?}", pooled.degraded);
    assert_eq!(pooled.items.len(), ITEMS);
    assert_eq!(pooled.items, one.items);
}

#[test]
fn a_vectors_fetch_carries_the_request_id_and_deadline_to_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), None);
    let fakes: Vec<Arc<FakeShard>> = (0..3)
        .map(|s| Arc::new(FakeShard::new(&model, s, 3, Answer::Hits)))
        .collect();
    let shards: Vec<Arc<dyn ShardClient>> = fakes
        .iter()
        .map(|f| f.clone() as Arc<dyn ShardClient>)
        .collect();
    let keys: Vec<u64> = model.items.keys.to_vec();
    let until = Instant::now() + Duration::from_secs(5);
    let (got, answered, asked) = actix::System::new().block_on(super::recommend::fetch_vectors(
        &shards, &keys, until, "req-9",
    ));
    assert_eq!((answered, asked), (3, 3));
    assert_eq!(got.iter().map(|v| v.len()).sum::<usize>(), ITEMS);
    for f in &fakes {
        let seen = f.fetches.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "shard {}", f.shard);
        assert_eq!(seen[0].0.as_deref(), Some("req-9"));
        assert_eq!(seen[0].1, Some(until));
    }
}
