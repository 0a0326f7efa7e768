//! The API's OpenAPI 3.1 document, at `GET /api/v1/openapi.json`: generated from the
//! handlers' own annotations and types (utoipa), never written by hand.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder, content::ContentBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::Problem;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "Sluice's HTTP API: executions, rules, events, packs, the datastore, tokens and the engine's own state. Every route but /healthz needs a token (Authorization: Bearer, or St2-Api-Key); errors are RFC 9457 problem details. See docs/api.md."
    ),
    paths(
        crate::list_executions,
        crate::create_execution,
        crate::get_execution,
        crate::cancel_executions,
        crate::cancel_execution,
        crate::rerun_execution,
        crate::execution_output,
        crate::list_actions,
        crate::queue_stats,
        crate::workers,
        crate::timers,
        crate::list_events,
        crate::get_event,
        crate::list_enforcements,
        crate::list_dead_letters,
        crate::ledger,
        crate::actors,
        crate::list_tokens,
        crate::create_token,
        crate::revoke_token,
        crate::engine_metrics,
        crate::healthz,
        document,
        crate::rules::list,
        crate::rules::show,
        crate::rules::create,
        crate::rules::replace,
        crate::rules::remove,
        crate::rules::enable,
        crate::rules::disable,
        crate::rules::test,
        crate::keys::list,
        crate::keys::read,
        crate::keys::write,
        crate::keys::remove,
        crate::keys::rotate,
        crate::catalog::list_packs,
        crate::catalog::show_pack,
        crate::catalog::install_pack,
        crate::catalog::reload_pack,
        crate::catalog::remove_pack,
        crate::catalog::show_action,
        crate::catalog::list_triggers,
        crate::catalog::show_trigger,
        crate::webhooks::receive,
    ),
    components(schemas(Problem)),
    modifiers(&Security, &Problems),
    security(("bearer" = []), ("st2_api_key" = []))
)]
struct ApiDoc;

/// The two ways to send a token.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "st2_api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("St2-Api-Key"))),
        );
    }
}

/// Every operation's other answers: a problem document, whatever the status.
struct Problems;

impl Modify for Problems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let problem = ResponseBuilder::new()
            .description("A problem: RFC 9457 problem details saying what is wrong and where")
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                        "Problem",
                    ))))
                    .build(),
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                operation
                    .responses
                    .responses
                    .insert("default".into(), RefOr::T(problem.clone()));
            }
        }
    }
}

/// `GET /api/v1/openapi.json`.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "engine",
    responses((status = 200, description = "This document", body = Value))
)]
pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
