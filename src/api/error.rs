//! The single mapping from `ServiceError` to gRPC status codes and HTTP
//! statuses with a JSON body.

use crate::service::types::ServiceError;
use actix_web::http::StatusCode;
use serde::Serialize;

pub fn grpc_status(e: &ServiceError) -> tonic::Status {
    let msg = e.to_string();
    match e {
        ServiceError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
        ServiceError::ResourceExhausted(_) => tonic::Status::resource_exhausted(msg),
        ServiceError::NotFound(_) => tonic::Status::not_found(msg),
        ServiceError::Unavailable { .. } => tonic::Status::unavailable(msg),
        ServiceError::Unauthenticated(_) => tonic::Status::unauthenticated(msg),
        ServiceError::FailedPrecondition { .. } => tonic::Status::failed_precondition(msg),
        ServiceError::Internal { .. } => tonic::Status::internal(msg),
    }
}

pub fn http_status(e: &ServiceError) -> StatusCode {
    match e {
        ServiceError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        ServiceError::ResourceExhausted(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
        ServiceError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ServiceError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        ServiceError::FailedPrecondition { .. } => StatusCode::CONFLICT,
        ServiceError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Serialize)]
pub struct ErrorDetail<'a> {
    pub code: &'a str,
    pub message: String,
}

impl actix_web::ResponseError for ServiceError {
    fn status_code(&self) -> StatusCode {
        http_status(self)
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        crate::telemetry::metrics::metrics()
            .errors
            .with_label_values(&[self.code()])
            .inc();
        actix_web::HttpResponse::build(self.status_code()).json(ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_matching_codes() {
        let cases = [
            (
                ServiceError::InvalidArgument("x".into()),
                tonic::Code::InvalidArgument,
                400,
            ),
            (
                ServiceError::ResourceExhausted("x".into()),
                tonic::Code::ResourceExhausted,
                413,
            ),
            (
                ServiceError::NotFound("x".into()),
                tonic::Code::NotFound,
                404,
            ),
            (
                ServiceError::unavailable("x"),
                tonic::Code::Unavailable,
                503,
            ),
            (
                ServiceError::Unauthenticated("x".into()),
                tonic::Code::Unauthenticated,
                401,
            ),
            (
                ServiceError::failed_precondition("x"),
                tonic::Code::FailedPrecondition,
                409,
            ),
            (ServiceError::internal("x"), tonic::Code::Internal, 500),
        ];
        for (e, g, h) in cases {
            assert_eq!(grpc_status(&e).code(), g);
            assert_eq!(http_status(&e).as_u16(), h);
        }
    }
}
