//! Sluice's HTTP API as the tests call it, whichever way Sluice was started.

use serde_json::{Value, json};

pub struct Api {
    pub http: reqwest::Client,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl Api {
    /// The text at `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .put(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Requests an execution; its id.
    pub async fn submit(&self, action: &str, parameters: Value) -> i64 {
        let (code, body) = self
            .post(
                "/api/v1/executions",
                &json!({ "action": action, "parameters": parameters }),
            )
            .await;
        assert_eq!(code, 201, "{body}");
        body["id"].as_i64().unwrap()
    }

    /// The children of a workflow execution, oldest first.
    pub async fn children(&self, id: i64) -> Vec<Value> {
        let (_, list) = self
            .get(&format!("/api/v1/executions?parent={id}&limit=1000"))
            .await;
        let mut list = list.as_array().unwrap().clone();
        list.reverse();
        list
    }

    /// `GET /api/v1/ledger`, or `None` while the API does not answer.
    pub async fn ledger(&self) -> Option<Value> {
        self.http
            .get(format!("{}/api/v1/ledger", self.base))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
}
