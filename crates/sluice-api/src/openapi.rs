//! What the OpenAPI document (generated in the crate root from the handlers' annotations
//! and types) adds to every operation: the two ways to send a token, and a problem document
//! as the answer for every status an operation does not name.

use utoipa::Modify;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder, content::ContentBuilder};

/// The two ways to send a token.
pub(crate) struct Security;

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
pub(crate) struct Problems;

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
