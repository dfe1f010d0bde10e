//! The HTTP API: each request is parsed into a [`Route`] from its method and path once,
//! then dispatched with a `match` on it.

use std::sync::Mutex;

use api::http::{self, json, Request, Response};

use super::attachments::pod_network_names;
use super::status::metrics;
use super::{ApplyRequest, Daemon, GcRequest, Overlay, PodNetwork, Refusal, API_VERSION};
use crate::attach::{
    AttachError, AttachRequest, HandOverRequest, CODE_NOT_A_TAP, CODE_UNKNOWN_CONTAINER,
};
use crate::topology::Network;

/// The method of a request on a resource that takes several.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// `GET`: read it.
    Get,
    /// `PUT`: create or replace it.
    Put,
    /// `DELETE`: remove it.
    Delete,
}

impl Verb {
    fn parse(method: &str) -> Result<Verb, NoRoute> {
        match method {
            "GET" => Ok(Verb::Get),
            "PUT" => Ok(Verb::Put),
            "DELETE" => Ok(Verb::Delete),
            _ => Err(NoRoute::MethodNotAllowed),
        }
    }
}

/// What an API request asks for, from its method and path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v1/version`, any method.
    Version,
    /// `GET /v1/status`.
    Status,
    /// `GET /metrics`.
    Metrics,
    /// `/v1/topology`: the desired topology (`PUT` applies, `DELETE` is `vnfhost down`).
    Topology(Verb),
    /// `/v1/overlay`: what the node agent learnt of the cluster (`PUT` replaces and
    /// applies it, `DELETE` empties it).
    Overlay(Verb),
    /// `GET /v1/networks`.
    Networks,
    /// `/v1/networks/NAME`: one network of the desired topology.
    Network {
        /// Its name (the rest of the path).
        name: &'a str,
        /// What to do with it.
        verb: Verb,
    },
    /// `GET /v1/services`.
    Services,
    /// `/v1/services/NAME`: one service of the desired topology.
    Service {
        /// Its name (the rest of the path).
        name: &'a str,
        /// What to do with it.
        verb: Verb,
    },
    /// `/v1/pod-networks/NAMESPACE/NAME`: a Kubernetes pod's extra networks.
    PodNetworks {
        /// `NAMESPACE/NAME`.
        key: &'a str,
        /// What to do with them.
        verb: Verb,
    },
    /// `GET /v1/attachments`.
    Attachments,
    /// `POST /v1/attachments/gc`: CNI GC.
    AttachmentsGc,
    /// `/v1/attachments/CONTAINER/IFNAME`: CNI ADD (`PUT`), DEL (`DELETE`), CHECK (`GET`).
    Attachment {
        /// The container id.
        container: &'a str,
        /// The interface in it.
        ifname: &'a str,
        /// What to do with it.
        verb: Verb,
    },
    /// `POST /v1/attachments/CONTAINER/IFNAME/vm`: hand a sandbox's tap over to its VM.
    HandOver {
        /// The container (sandbox) id.
        container: &'a str,
        /// The interface in it.
        ifname: &'a str,
    },
}

/// Why a request has no route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoRoute {
    /// 404, with what the path should have been.
    NotFound(String),
    /// 405: the path exists, not with this method.
    MethodNotAllowed,
}

impl NoRoute {
    /// The error response.
    pub fn response(&self) -> Response {
        match self {
            NoRoute::NotFound(why) => Response::json(404, http::error_body(why)),
            NoRoute::MethodNotAllowed => {
                Response::json(405, http::error_body("method not allowed"))
            }
        }
    }
}

impl<'a> Route<'a> {
    /// The route of `method` on `path`.
    pub fn parse(method: &str, path: &'a str) -> Result<Route<'a>, NoRoute> {
        let only = |m: &str, r: Route<'a>| {
            if method == m {
                Ok(r)
            } else {
                Err(NoRoute::MethodNotAllowed)
            }
        };
        match path {
            "/v1/version" => Ok(Route::Version),
            "/v1/status" => only("GET", Route::Status),
            "/metrics" => only("GET", Route::Metrics),
            "/v1/topology" => Ok(Route::Topology(Verb::parse(method)?)),
            "/v1/overlay" => Ok(Route::Overlay(Verb::parse(method)?)),
            "/v1/networks" => only("GET", Route::Networks),
            "/v1/services" => only("GET", Route::Services),
            "/v1/attachments" => only("GET", Route::Attachments),
            "/v1/attachments/gc" if method == "POST" => Ok(Route::AttachmentsGc),
            _ => {
                if let Some(name) = path.strip_prefix("/v1/networks/") {
                    return Ok(Route::Network {
                        name,
                        verb: Verb::parse(method)?,
                    });
                }
                if let Some(name) = path.strip_prefix("/v1/services/") {
                    return Ok(Route::Service {
                        name,
                        verb: Verb::parse(method)?,
                    });
                }
                if let Some(key) = path.strip_prefix("/v1/pod-networks/") {
                    if key.split('/').count() != 2 || key.split('/').any(str::is_empty) {
                        return Err(NoRoute::NotFound(
                            "expected /v1/pod-networks/NAMESPACE/NAME".into(),
                        ));
                    }
                    return Ok(Route::PodNetworks {
                        key,
                        verb: Verb::parse(method)?,
                    });
                }
                if let Some(rest) = path.strip_prefix("/v1/attachments/") {
                    let mut parts = rest.splitn(3, '/');
                    return match (parts.next(), parts.next(), parts.next()) {
                        (Some(container), Some(ifname), None) => Ok(Route::Attachment {
                            container,
                            ifname,
                            verb: Verb::parse(method)?,
                        }),
                        (Some(container), Some(ifname), Some("vm")) => {
                            only("POST", Route::HandOver { container, ifname })
                        }
                        _ => Err(NoRoute::NotFound(
                            "expected /v1/attachments/CONTAINER/IFNAME or \
                             /v1/attachments/CONTAINER/IFNAME/vm"
                                .into(),
                        )),
                    };
                }
                Err(NoRoute::NotFound(format!(
                    "no such endpoint {path} (API {API_VERSION})"
                )))
            }
        }
    }
}

fn attach_error(status: u16, e: AttachError) -> Response {
    Response::json(status, serde_json::to_vec(&e).unwrap_or_default())
}

fn refusal(status: u16, r: &Refusal) -> Response {
    Response::json(status, serde_json::to_vec(r).unwrap_or_default())
}

/// Answers one API request.
pub(super) fn handle(d: &Mutex<Daemon>, req: Request) -> Response {
    let route = match Route::parse(&req.method, &req.path) {
        Ok(r) => r,
        Err(e) => return e.response(),
    };
    let mut d = match d.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    match route {
        Route::Version => json(&serde_json::json!({
            "api": API_VERSION,
            "version": env!("CARGO_PKG_VERSION"),
        })),
        Route::Status => json(&d.status()),
        Route::Metrics => Response::text(200, metrics(&d.status())),
        Route::Topology(Verb::Get) => json(&d.st.desired),
        Route::Topology(Verb::Put) => match serde_json::from_slice::<ApplyRequest>(&req.body) {
            Err(e) => refusal(
                400,
                &Refusal {
                    error: format!("topology: {e}"),
                    problems: vec![],
                },
            ),
            Ok(a) => match d.apply(a.topology, a.source) {
                Ok(r) => json(&r),
                Err(r) => refusal(422, &r),
            },
        },
        Route::Topology(Verb::Delete) => json(&d.down()),
        Route::Overlay(Verb::Get) => json(&d.st.overlay),
        Route::Overlay(Verb::Put) => match serde_json::from_slice::<Overlay>(&req.body) {
            Err(e) => refusal(
                400,
                &Refusal {
                    error: format!("overlay: {e}"),
                    problems: vec![],
                },
            ),
            Ok(o) => match d.put_overlay(o) {
                Ok(r) => json(&r),
                Err(r) => refusal(422, &r),
            },
        },
        Route::Overlay(Verb::Delete) => match d.put_overlay(Overlay::default()) {
            Ok(r) => json(&r),
            Err(r) => refusal(422, &r),
        },
        Route::Networks => json(
            &d.st
                .desired
                .as_ref()
                .map(|t| t.networks.clone())
                .unwrap_or_default(),
        ),
        Route::Network {
            name,
            verb: Verb::Get,
        } => match d
            .st
            .desired
            .as_ref()
            .and_then(|t| t.networks.iter().find(|n| n.name == name))
        {
            Some(n) => json(n),
            None => Response::json(404, http::error_body(&format!("no network {name:?}"))),
        },
        Route::Network {
            name,
            verb: Verb::Put,
        } => match serde_json::from_slice::<Network>(&req.body) {
            Err(e) => refusal(
                400,
                &Refusal {
                    error: format!("network: {e}"),
                    problems: vec![],
                },
            ),
            Ok(n) => match d.put_network(name, n) {
                Ok(r) => json(&r),
                Err(r) => refusal(422, &r),
            },
        },
        Route::Network {
            name,
            verb: Verb::Delete,
        } => match d.delete_network(name) {
            Ok(r) => json(&r),
            Err(r) => refusal(422, &r),
        },
        Route::Services => json(
            &d.st
                .desired
                .as_ref()
                .map(|t| t.services.clone())
                .unwrap_or_default(),
        ),
        Route::Service {
            name,
            verb: Verb::Get,
        } => match d
            .st
            .desired
            .as_ref()
            .and_then(|t| t.services.iter().find(|n| n.name == name))
        {
            Some(n) => json(n),
            None => Response::json(404, http::error_body(&format!("no service {name:?}"))),
        },
        Route::Service {
            name,
            verb: Verb::Put,
        } => match serde_path_to_error::deserialize::<_, api::daemon::Service>(
            &mut serde_json::Deserializer::from_slice(&req.body),
        ) {
            Err(e) => refusal(
                400,
                &Refusal {
                    error: format!("service.{}: {}", e.path(), e.inner()),
                    problems: vec![],
                },
            ),
            Ok(n) => match d.put_service(name, n) {
                Ok(r) => json(&r),
                Err(r) => refusal(422, &r),
            },
        },
        Route::Service {
            name,
            verb: Verb::Delete,
        } => match d.delete_service(name) {
            Ok(r) => json(&r),
            Err(r) => refusal(422, &r),
        },
        Route::PodNetworks {
            key,
            verb: Verb::Get,
        } => json(&d.st.pod_networks.get(key).cloned().unwrap_or_default()),
        Route::PodNetworks {
            key,
            verb: Verb::Put,
        } => match serde_json::from_slice::<Vec<PodNetwork>>(&req.body) {
            Err(e) => Response::json(400, http::error_body(&format!("pod networks: {e}"))),
            Ok(v) if v.len() > 7 => Response::json(
                422,
                http::error_body("at most 7 extra networks (8 interfaces) per pod"),
            ),
            Ok(v) => match pod_network_names(&v) {
                Err(e) => Response::json(422, http::error_body(&e)),
                Ok(()) => {
                    if d.st.pod_networks.get(key) != Some(&v) {
                        d.st.pod_networks.insert(key.to_string(), v);
                        d.persist();
                    }
                    json(&serde_json::json!({}))
                }
            },
        },
        Route::PodNetworks {
            key,
            verb: Verb::Delete,
        } => {
            if d.st.pod_networks.remove(key).is_some() {
                d.persist();
            }
            json(&serde_json::json!({}))
        }
        Route::Attachments => json(&d.st.attachments.values().collect::<Vec<_>>()),
        Route::AttachmentsGc => match serde_json::from_slice::<GcRequest>(&req.body) {
            Err(e) => attach_error(400, AttachError::new(7, format!("gc: {e}"))),
            Ok(g) => match d.gc(g) {
                Ok(removed) => json(&serde_json::json!({ "removed": removed })),
                Err(e) => attach_error(422, e),
            },
        },
        Route::Attachment {
            container,
            ifname,
            verb: Verb::Get,
        } => match d.st.attachments.get(&format!("{container}/{ifname}")) {
            Some(a) => json(a),
            None => attach_error(
                404,
                AttachError::new(
                    CODE_UNKNOWN_CONTAINER,
                    format!("no attachment {container}/{ifname}"),
                ),
            ),
        },
        Route::Attachment {
            container,
            ifname,
            verb: Verb::Put,
        } => match serde_json::from_slice::<AttachRequest>(&req.body) {
            Err(e) => attach_error(400, AttachError::new(7, format!("attachment: {e}"))),
            Ok(r) => match d.attach(container, ifname, r) {
                Ok(a) => json(&a),
                Err(e) => attach_error(422, e),
            },
        },
        Route::Attachment {
            container,
            ifname,
            verb: Verb::Delete,
        } => match d.detach(container, ifname) {
            Ok(removed) => json(&serde_json::json!({ "removed": removed })),
            Err(e) => attach_error(422, e),
        },
        Route::HandOver { container, ifname } => {
            // No fields yet: an empty body is the empty request.
            let body: &[u8] = if req.body.is_empty() {
                b"{}"
            } else {
                &req.body
            };
            match serde_json::from_slice::<HandOverRequest>(body) {
                Err(e) => attach_error(400, AttachError::new(7, format!("hand-over: {e}"))),
                Ok(HandOverRequest {}) => match d.hand_over(container, ifname) {
                    Ok(a) => json(&a),
                    Err(e) => {
                        let status = match e.code {
                            CODE_UNKNOWN_CONTAINER => 404,
                            CODE_NOT_A_TAP => 409,
                            _ => 422,
                        };
                        attach_error(status, e)
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_into_routes() {
        let ok = |m, p| Route::parse(m, p).unwrap();
        assert_eq!(ok("GET", "/v1/status"), Route::Status);
        assert_eq!(ok("POST", "/v1/version"), Route::Version);
        assert_eq!(ok("DELETE", "/v1/topology"), Route::Topology(Verb::Delete));
        assert_eq!(ok("PUT", "/v1/overlay"), Route::Overlay(Verb::Put));
        assert_eq!(
            ok("PUT", "/v1/networks/net-a"),
            Route::Network {
                name: "net-a",
                verb: Verb::Put
            }
        );
        assert_eq!(
            ok("GET", "/v1/pod-networks/ns/pod"),
            Route::PodNetworks {
                key: "ns/pod",
                verb: Verb::Get
            }
        );
        assert_eq!(ok("POST", "/v1/attachments/gc"), Route::AttachmentsGc);
        assert_eq!(
            ok("DELETE", "/v1/attachments/c1/eth0"),
            Route::Attachment {
                container: "c1",
                ifname: "eth0",
                verb: Verb::Delete
            }
        );
        assert_eq!(
            ok("POST", "/v1/attachments/c1/eth0/vm"),
            Route::HandOver {
                container: "c1",
                ifname: "eth0"
            }
        );
        // An interface may be called vm.
        assert_eq!(
            ok("GET", "/v1/attachments/c1/vm"),
            Route::Attachment {
                container: "c1",
                ifname: "vm",
                verb: Verb::Get
            }
        );
    }

    #[test]
    fn anything_else_is_404_or_405() {
        let no = |m, p| Route::parse(m, p).unwrap_err();
        for (m, p) in [
            ("PUT", "/v1/status"),
            ("POST", "/metrics"),
            ("POST", "/v1/topology"),
            ("POST", "/v1/overlay"),
            ("POST", "/v1/networks"),
            ("PATCH", "/v1/networks/a"),
            ("DELETE", "/v1/attachments"),
            ("POST", "/v1/attachments/c/eth0"),
            ("POST", "/v1/pod-networks/ns/pod"),
            ("GET", "/v1/attachments/c/eth0/vm"),
            ("PUT", "/v1/attachments/c/eth0/vm"),
        ] {
            assert_eq!(no(m, p), NoRoute::MethodNotAllowed, "{m} {p}");
        }
        for (m, p) in [
            ("GET", "/v2/status"),
            ("GET", "/v1/pod-networks/ns"),
            ("GET", "/v1/pod-networks/ns/pod/x"),
            ("GET", "/v1/attachments/c1"),
            ("GET", "/v1/attachments/gc"),
            ("POST", "/v1/attachments/c/eth0/x"),
            ("POST", "/v1/attachments/c/eth0/vm/x"),
        ] {
            assert!(matches!(no(m, p), NoRoute::NotFound(_)), "{m} {p}");
        }
        assert_eq!(no("GET", "/nope").response().status, 404);
        assert_eq!(no("PUT", "/v1/status").response().status, 405);
    }
}
