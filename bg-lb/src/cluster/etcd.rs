//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/...` on the
//! client URL, HTTP/1.1, served by etcd 3.4 and later), with the calls the
//! fleet needs: reads, compare-and-swap writes and leases.
//!
//! Why the gateway over hyper rather than the `etcd-client` crate: that
//! crate brings tonic, prost and a `protoc` build step for five unary calls,
//! on a build that is already the slowest part of this project; hyper is
//! already here for metrics. The gateway is etcd's own documented API
//! (`etcdserverpb` in JSON: 64-bit numbers as strings, bytes as base64),
//! stable across 3.4 and 3.5. Watches are not used (see [`super::watch`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, StatusCode, body::Bytes, client::conn::http1};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// One call's deadline, per endpoint tried: a change waits at most this
/// long per endpoint before the operator hears that etcd is unreachable.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(800);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd is unreachable ({endpoints}): {reason}")]
    Unreachable { endpoints: String, reason: String },
    #[error("etcd at {endpoint} refused {path}: HTTP {status}: {message}")]
    Refused {
        endpoint: String,
        path: &'static str,
        status: StatusCode,
        message: String,
    },
    #[error("etcd at {endpoint} answered {path} with something that is not etcd's JSON: {reason}")]
    BadAnswer {
        endpoint: String,
        path: &'static str,
        reason: String,
    },
}

/// A key-value pair as etcd holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub lease: i64,
}

/// The etcd cluster behind a list of client URLs; cheap to clone.
#[derive(Clone, Debug)]
pub struct Etcd {
    endpoints: Arc<[String]>,
    /// The endpoint that answered last, tried first.
    preferred: Arc<AtomicUsize>,
}

impl Etcd {
    /// `endpoints` are `host:port` (see [`crate::config::ClusterConfig`]).
    pub fn new(endpoints: &[String]) -> Self {
        Etcd {
            endpoints: endpoints.into(),
            preferred: Arc::default(),
        }
    }

    pub fn endpoints(&self) -> String {
        self.endpoints.join(", ")
    }

    /// The value of `key` and the store's revision.
    pub async fn get(&self, key: &str) -> Result<(i64, Option<Kv>), EtcdError> {
        let answer: RangeAnswer = self.call("/v3/kv/range", json!({ "key": b64(key) })).await?;
        Ok((answer.header.revision, answer.kvs.into_iter().next().map(Kv::from)))
    }

    /// Every key under `prefix` (which should end in `/`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        let body = json!({ "key": b64(prefix), "range_end": b64(prefix_end(prefix)) });
        let answer: RangeAnswer = self.call("/v3/kv/range", body).await?;
        Ok(answer.kvs.into_iter().map(Kv::from).collect())
    }

    /// Writes `value` only if `key` was last modified at `mod_revision` (0:
    /// only if it does not exist): the revision of the write, or `None` if
    /// someone wrote in between.
    pub async fn put_if_unchanged(&self, key: &str, value: &[u8], mod_revision: i64) -> Result<Option<i64>, EtcdError> {
        let body = json!({
            "compare": [{ "key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision.to_string() }],
            "success": [{ "request_put": { "key": b64(key), "value": b64(value) } }],
        });
        let answer: TxnAnswer = self.call("/v3/kv/txn", body).await?;
        Ok(answer.succeeded.then_some(answer.header.revision))
    }

    /// Creates `key` = `value` tied to `lease` unless it exists: whether
    /// this call created it, or it already held `value` under `lease` (held
    /// by us before).
    pub async fn create_or_hold(&self, key: &str, value: &[u8], lease: i64) -> Result<bool, EtcdError> {
        let body = json!({
            "compare": [{ "key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0" }],
            "success": [{ "request_put": { "key": b64(key), "value": b64(value), "lease": lease.to_string() } }],
            "failure": [{ "request_range": { "key": b64(key) } }],
        });
        let answer: TxnAnswer = self.call("/v3/kv/txn", body).await?;
        if answer.succeeded {
            return Ok(true);
        }
        let held = answer
            .responses
            .into_iter()
            .filter_map(|r| r.response_range)
            .flat_map(|r| r.kvs);
        Ok(held.map(Kv::from).any(|kv| kv.value == value && kv.lease == lease))
    }

    /// `key` = `value`, tied to `lease` (0: no lease).
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        let body = json!({ "key": b64(key), "value": b64(value), "lease": lease.to_string() });
        self.call::<Value>("/v3/kv/put", body).await.map(drop)
    }

    pub async fn delete(&self, key: &str) -> Result<(), EtcdError> {
        self.call::<Value>("/v3/kv/deleterange", json!({ "key": b64(key) }))
            .await
            .map(drop)
    }

    /// Deletes `key` if it holds `value`.
    pub async fn delete_if_value(&self, key: &str, value: &[u8]) -> Result<(), EtcdError> {
        let body = json!({
            "compare": [{ "key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value) }],
            "success": [{ "request_delete_range": { "key": b64(key) } }],
        });
        self.call::<Value>("/v3/kv/txn", body).await.map(drop)
    }

    /// A new lease that expires `ttl` after its last keep-alive.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let answer: LeaseAnswer = self
            .call("/v3/lease/grant", json!({ "TTL": ttl.as_secs().max(1).to_string() }))
            .await?;
        Ok(answer.id)
    }

    /// Renews `lease`: whether it was still alive (an expired lease and its
    /// keys are gone for good).
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, EtcdError> {
        #[derive(Deserialize)]
        struct Answer {
            result: LeaseAnswer,
        }
        let answer: Answer = self
            .call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))
            .await?;
        Ok(answer.result.ttl > 0)
    }

    /// One POST, to the preferred endpoint first and then to each other one.
    async fn call<T: DeserializeOwned>(&self, path: &'static str, body: Value) -> Result<T, EtcdError> {
        let body = Bytes::from(serde_json::to_vec(&body).expect("JSON serializes"));
        let first = self.preferred.load(Ordering::Relaxed);
        let mut reasons = Vec::new();
        for i in 0..self.endpoints.len() {
            let index = (first + i) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            match tokio::time::timeout(CALL_TIMEOUT, post(endpoint, path, body.clone())).await {
                Ok(Ok((status, bytes))) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return decode(endpoint, path, status, &bytes);
                }
                Ok(Err(e)) => reasons.push(format!("{endpoint}: {e}")),
                Err(_) => reasons.push(format!("{endpoint}: no answer within {CALL_TIMEOUT:?}")),
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.endpoints(),
            reason: reasons.join("; "),
        })
    }
}

/// One request on a fresh connection: a few a second, so no pool.
async fn post(endpoint: &str, path: &str, body: Bytes) -> Result<(StatusCode, Bytes), Box<dyn std::error::Error>> {
    let stream = TcpStream::connect(endpoint).await?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::post(path)
        .header(hyper::header::HOST, endpoint)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

fn decode<T: DeserializeOwned>(
    endpoint: &str,
    path: &'static str,
    status: StatusCode,
    bytes: &[u8],
) -> Result<T, EtcdError> {
    if !status.is_success() {
        #[derive(Deserialize)]
        struct Failure {
            #[serde(default)]
            message: String,
        }
        let message = serde_json::from_slice::<Failure>(bytes)
            .map(|f| f.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned());
        return Err(EtcdError::Refused {
            endpoint: endpoint.to_owned(),
            path,
            status,
            message,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| EtcdError::BadAnswer {
        endpoint: endpoint.to_owned(),
        path,
        reason: e.to_string(),
    })
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    BASE64.encode(bytes)
}

/// The end of the range of keys starting with `prefix`: its last byte plus
/// one (etcd's `clientv3.GetPrefixRangeEnd`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): the range to the end of the keyspace.
    vec![0]
}

/// etcd's JSON writes 64-bit integers as strings and leaves out zeros.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(i64),
    }
    match Int::deserialize(d)? {
        Int::Number(n) => Ok(n),
        Int::Text(t) => t.parse().map_err(serde::de::Error::custom),
    }
}

fn base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    BASE64.decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
}

#[derive(Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Deserialize)]
struct RawKv {
    #[serde(default, deserialize_with = "base64")]
    key: Vec<u8>,
    #[serde(default, deserialize_with = "base64")]
    value: Vec<u8>,
    #[serde(default, deserialize_with = "int64")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "int64")]
    lease: i64,
}

impl From<RawKv> for Kv {
    fn from(raw: RawKv) -> Self {
        Kv {
            key: raw.key,
            value: raw.value,
            mod_revision: raw.mod_revision,
            lease: raw.lease,
        }
    }
}

#[derive(Deserialize)]
struct RangeAnswer {
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKv>,
}

#[derive(Deserialize)]
struct TxnAnswer {
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<TxnResponse>,
}

#[derive(Deserialize)]
struct TxnResponse {
    response_range: Option<RangeBody>,
}

#[derive(Deserialize)]
struct RangeBody {
    #[serde(default)]
    kvs: Vec<RawKv>,
}

#[derive(Deserialize)]
struct LeaseAnswer {
    #[serde(rename = "ID", default, deserialize_with = "int64")]
    id: i64,
    #[serde(rename = "TTL", default, deserialize_with = "int64")]
    ttl: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_its_last_key() {
        assert_eq!(prefix_end("/bg-lb/"), b"/bg-lb0");
        assert_eq!(prefix_end("a\u{7f}"), vec![b'a', 0x80]);
    }

    /// Answers as etcd 3.4 sends them (captured with curl): numbers as
    /// strings, zero fields left out.
    #[test]
    fn etcd_json_answers_decode() {
        let range = br#"{"header":{"cluster_id":"1","member_id":"2","revision":"3","raft_term":"2"},"kvs":[{"key":"L2w=","create_revision":"3","mod_revision":"3","version":"1","value":"aDE=","lease":"7587899254107608072"}],"count":"1"}"#;
        let answer: RangeAnswer = decode("e:1", "/v3/kv/range", StatusCode::OK, range).unwrap();
        assert_eq!(answer.header.revision, 3);
        let kv = Kv::from(answer.kvs.into_iter().next().unwrap());
        assert_eq!((kv.key.as_slice(), kv.value.as_slice()), (&b"/l"[..], &b"h1"[..]));
        assert_eq!((kv.mod_revision, kv.lease), (3, 7_587_899_254_107_608_072));
        let failed: TxnAnswer = decode("e:1", "/v3/kv/txn", StatusCode::OK, br#"{"header":{"revision":"2"}}"#).unwrap();
        assert!(!failed.succeeded);
        let expired = br#"{"result":{"header":{"revision":"4"},"ID":"7587899254107608072"}}"#;
        #[derive(Deserialize)]
        struct Answer {
            result: LeaseAnswer,
        }
        assert_eq!(
            decode::<Answer>("e:1", "/v3/lease/keepalive", StatusCode::OK, expired)
                .unwrap()
                .result
                .ttl,
            0
        );
    }

    #[test]
    fn an_etcd_error_names_the_endpoint_and_its_message() {
        let body =
            br#"{"error":"etcdserver: request is too large","code":3,"message":"etcdserver: request is too large"}"#;
        let error = decode::<Value>("10.0.0.5:2379", "/v3/kv/txn", StatusCode::BAD_REQUEST, body).unwrap_err();
        assert_eq!(
            error.to_string(),
            "etcd at 10.0.0.5:2379 refused /v3/kv/txn: HTTP 400 Bad Request: etcdserver: request is too large"
        );
    }
}
