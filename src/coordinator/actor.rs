//! `CoordinatorActor`: holds nothing durable; each Recommend message runs
//! as its own future on the actor's arbiter, so one slow request never
//! blocks the next.

use super::recommend::{recommend, RecommendEnv};
use crate::node::types::{Recommendation, ServiceError};
use crate::node::validate::ValidRecommend;
use actix::{Actor, Context, Handler, Message, ResponseFuture};

#[derive(Default)]
pub struct CoordinatorActor;

impl Actor for CoordinatorActor {
    type Context = Context<Self>;
}

pub struct Recommend {
    pub env: RecommendEnv,
    pub req: ValidRecommend,
    pub request_id: String,
}

impl Message for Recommend {
    type Result = Result<Recommendation, ServiceError>;
}

impl Handler<Recommend> for CoordinatorActor {
    type Result = ResponseFuture<Result<Recommendation, ServiceError>>;

    fn handle(&mut self, msg: Recommend, _: &mut Context<Self>) -> Self::Result {
        let span = tracing::debug_span!("recommend", request_id = %msg.request_id, user = %msg.req.user_id);
        Box::pin(tracing::Instrument::instrument(
            recommend(msg.env, msg.req, msg.request_id),
            span,
        ))
    }
}
