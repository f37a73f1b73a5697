//! Pre-minted callouts: a unique PoP-signed request and unique ids for each one, so no timed
//! phase pays for minting and accessgate never sees a replay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use accessgate_emulator::sender::{CalloutFields, flat_body};
use accessgate_emulator::{Emulator, PopOptions, RegisterRequest, SendOptions};
use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hyper::header::HeaderValue;

/// One ready-to-send callout.
#[derive(Clone)]
pub struct Callout {
    /// `PoP <SHR>`.
    pub authorization: HeaderValue,
    pub body: Bytes,
    /// The assignment request's id, to find its resume in the emulator.
    pub request_id: String,
}

/// The assignment request ids of `calls`, in order.
pub fn request_ids(calls: &[Callout]) -> Vec<String> {
    calls.iter().map(|c| c.request_id.clone()).collect()
}

/// The access token inside an SHR (the `at` member of its payload).
fn inner_access_token(shr: &str) -> anyhow::Result<String> {
    let payload = shr.split('.').nth(1).context("SHR is not a compact JWS")?;
    let payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).context("SHR payload")?)
            .context("SHR payload is not JSON")?;
    payload["at"]
        .as_str()
        .map(str::to_owned)
        .context("SHR without `at`")
}

fn mint_range(
    em: &Emulator,
    at: Option<&str>,
    count: usize,
    register: bool,
) -> anyhow::Result<Vec<Callout>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let fields = CalloutFields::from_options(&SendOptions {
            access_package_name: Some("Bench".into()),
            catalog_name: Some("Bench".into()),
            ..SendOptions::default()
        });
        if register {
            // So the worker's resume succeeds instead of failing with 404 and retrying.
            em.register_request(&RegisterRequest {
                id: Some(fields.request_id.clone()),
                stage: Some(fields.stage.clone()),
                stage_instance_id: Some(fields.stage_instance_id.clone()),
                timeout: Some(fields.timeout.clone()),
                request_type: None,
            })?;
        }
        let shr = em.mint_pop(&PopOptions {
            // None: the emulator mints a new inner token (its own `uti`) for this request.
            at_token: at.map(str::to_owned),
            ts_offset_secs: Some(0),
            ..PopOptions::default()
        })?;
        out.push(Callout {
            authorization: HeaderValue::from_str(&format!("PoP {shr}"))?,
            body: Bytes::from(serde_json::to_vec(&flat_body(&fields))?),
            request_id: fields.request_id.clone(),
        });
    }
    Ok(out)
}

/// How the inner access tokens of a load are shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// (a) Every signed request carries its own inner token.
    OwnToken,
    /// (b) One inner token in every signed request, as Entra sends them (it caches its token for
    /// about an hour and signs a new request around it for each callout).
    SharedToken,
}

/// Mints `count` callouts on `threads` blocking threads, each SHR signed afresh with unique ids.
/// The baseline verifies both signatures of every request whatever the shape; accessgate may
/// skip the inner verify for a token it has validated before (shape b).
pub async fn mint(
    em: &Emulator,
    count: usize,
    threads: usize,
    register: bool,
    shape: Shape,
) -> anyhow::Result<(Vec<Callout>, Duration)> {
    let t0 = Instant::now();
    let at: Option<Arc<str>> = match shape {
        Shape::SharedToken => {
            Some(inner_access_token(&em.mint_pop(&PopOptions::default())?)?.into())
        }
        Shape::OwnToken => None,
    };
    let threads = threads.max(1);
    let mut tasks = Vec::new();
    for k in 0..threads {
        let n = count / threads + usize::from(k < count % threads);
        let (em, at) = (em.clone(), at.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            mint_range(&em, at.as_deref(), n, register)
        }));
    }
    let mut out = Vec::with_capacity(count);
    for t in tasks {
        out.extend(t.await.context("minting thread")??);
    }
    Ok((out, t0.elapsed()))
}
