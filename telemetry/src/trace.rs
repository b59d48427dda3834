//! The tracing subscriber: text or JSON logs on stderr (every event carries the fields of the
//! spans it is in: `run_id`, `stage`, `attempt`, `delivery`), and, with the `otlp` feature and
//! an endpoint, the spans exported over OTLP/HTTP (protobuf) as traces.
//!
//! A remote runner's stage span joins the daemon's trace through the lease's `traceparent`
//! (W3C Trace Context: `00-<trace id>-<span id>-<flags>`), made by [`traceparent`] and read by
//! [`set_remote_parent`].

use tracing::Span;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub struct TraceConfig {
    pub json: bool,
    pub ansi: bool,
    pub filter: EnvFilter,
    /// The OTLP/HTTP collector (`http://collector:4318`; `/v1/traces` is added unless the URL
    /// already names it).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(
        "tracing.otlp_endpoint is set, but this build has no OTLP export (cargo feature `otlp`)"
    )]
    NoOtlp,
    #[error("cannot set up OTLP export to {endpoint}: {message}")]
    Otlp { endpoint: String, message: String },
}

/// Keeps the exporter alive; [`TraceGuard::shutdown`] sends what is buffered. Blocking.
#[must_use = "dropping the guard stops exporting spans"]
pub struct TraceGuard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl TraceGuard {
    /// Flushes and stops the exporter (a no-op without one). Blocking: call it off the async
    /// runtime (`spawn_blocking`) or after it.
    pub fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown() {
                eprintln!("warning: exporting the last spans failed: {error}");
            }
        }
    }
}

/// Installs the global subscriber (once; later calls keep the first).
pub fn init(config: TraceConfig) -> Result<TraceGuard, TraceError> {
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(config.ansi)
        .with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<_> + Send + Sync> = if config.json {
        Box::new(fmt.json())
    } else {
        Box::new(fmt)
    };
    let registry = tracing_subscriber::registry().with(config.filter).with(fmt);
    match config.otlp_endpoint {
        None => {
            let _ = registry.try_init();
            Ok(TraceGuard {
                #[cfg(feature = "otlp")]
                provider: None,
            })
        }
        #[cfg(not(feature = "otlp"))]
        Some(_) => Err(TraceError::NoOtlp),
        #[cfg(feature = "otlp")]
        Some(endpoint) => {
            use opentelemetry::trace::TracerProvider;
            let provider = otlp::provider(&endpoint, config.service_name)?;
            let tracer = provider.tracer("deploylite");
            let _ = registry
                .with(tracing_opentelemetry::layer().with_tracer(tracer))
                .try_init();
            Ok(TraceGuard {
                provider: Some(provider),
            })
        }
    }
}

/// `span`'s W3C `traceparent`, when spans are exported (None otherwise: nothing to join).
pub fn traceparent(span: &Span) -> Option<String> {
    #[cfg(feature = "otlp")]
    {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let context = span.context();
        let otel = context.span();
        let sc = otel.span_context();
        sc.is_valid().then(|| {
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            )
        })
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = span;
        None
    }
}

/// Makes `span` a child of the remote span `traceparent` names (a malformed value is ignored:
/// the span then starts a trace of its own).
pub fn set_remote_parent(span: &Span, traceparent: &str) {
    #[cfg(feature = "otlp")]
    if let Some(remote) = parse_traceparent(traceparent) {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    #[cfg(not(feature = "otlp"))]
    let _ = (span, traceparent);
}

#[cfg(feature = "otlp")]
fn parse_traceparent(text: &str) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let mut parts = text.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

#[cfg(feature = "otlp")]
mod otlp {
    use super::TraceError;
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;

    /// The collector's traces URL: `/v1/traces` under the endpoint, unless it names it.
    pub fn traces_url(endpoint: &str) -> String {
        let base = endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        }
    }

    pub fn provider(
        endpoint: &str,
        service_name: &'static str,
    ) -> Result<SdkTracerProvider, TraceError> {
        let failed = |message: String| TraceError::Otlp {
            endpoint: endpoint.to_string(),
            message,
        };
        let url = traces_url(endpoint);
        // The blocking client owns a runtime of its own, which must neither be built nor
        // dropped on an async runtime's thread: build it on a thread of its own. The batch
        // processor sends from its own thread too.
        let exporter = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let client = reqwest::blocking::Client::builder()
                        .timeout(std::time::Duration::from_secs(10))
                        .build()
                        .map_err(|e| e.to_string())?;
                    opentelemetry_otlp::SpanExporter::builder()
                        .with_http()
                        .with_http_client(client)
                        .with_protocol(Protocol::HttpBinary)
                        .with_endpoint(url.clone())
                        .build()
                        .map_err(|e| e.to_string())
                })
                .join()
                .map_err(|_| "the exporter's setup panicked".to_string())?
        })
        .map_err(failed)?;
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service_name).build())
            .build())
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_traces_path_is_added_once() {
            assert_eq!(
                super::traces_url("http://c:4318"),
                "http://c:4318/v1/traces"
            );
            assert_eq!(
                super::traces_url("http://c:4318/"),
                "http://c:4318/v1/traces"
            );
            assert_eq!(
                super::traces_url("http://c:4318/v1/traces"),
                "http://c:4318/v1/traces"
            );
        }
    }
}

#[cfg(all(test, feature = "otlp"))]
mod tests {
    #[test]
    fn traceparents_are_checked() {
        let ok =
            super::parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .unwrap();
        assert_eq!(
            ok.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(ok.is_remote());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-zzf067aa0ba902b7-01",
        ] {
            assert!(super::parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
