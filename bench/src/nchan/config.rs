//! nchan's nginx config, written for one run: one worker, `127.0.0.1` on the port given and
//! nothing else, pid, logs and temp paths in the run's dir, and the locations the bench uses
//! (docs/benchmarks.md#nchan). Nothing here starts anything.

use std::path::Path;
use std::process::Command;

use super::{MODULE, NGINX};

/// fds nginx keeps beyond its connections (listeners, logs, shared memory, the master's pipe).
const FD_SPARE: u64 = 100;

/// The HTTP modules this nginx was built without (`--without-http_X_module` in `nginx -V`), so
/// the config names no temp path of a module that is not there.
pub(super) fn compiled_without() -> Vec<String> {
    let out = Command::new(NGINX).arg("-V").output();
    let text = out.map_or(String::new(), |o| String::from_utf8_lossy(&o.stderr).into());
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix("--without-http_"))
        .filter_map(|w| w.strip_suffix("_module"))
        .map(str::to_string)
        .collect()
}

/// The whole config: one worker, loopback only, everything it writes in `dir`.
pub(super) fn write(dir: &Path, port: u16, fd_limit: u64, without: &[String]) -> String {
    let d = dir.display();
    let connections = fd_limit.saturating_sub(FD_SPARE).max(1024);
    let temp: String = ["proxy", "fastcgi", "uwsgi", "scgi"]
        .into_iter()
        .filter(|m| !without.iter().any(|w| w == m))
        .map(|m| format!("    {m}_temp_path {d}/{m}_temp;\n"))
        .collect();
    format!(
        r#"# Written by edgehub-bench (bench/src/nchan/config.rs): docs/benchmarks.md#nchan
load_module {MODULE};
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {fd_limit};
pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections {connections};
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body_temp;
{temp}    keepalive_requests 1000000;

    server {{
        listen 127.0.0.1:{port};

        location = /healthz {{
            return 200 "ok";
        }}
        # Publish: the request body is the message.
        location ~ ^/pub/([A-Za-z0-9._:-]+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
        }}
        # EventSource subscriber: `data:` is the message, as on the hub's /sse/{{c}}.
        location ~ ^/sse/([A-Za-z0-9._:-]+)$ {{
            nchan_subscriber eventsource;
            nchan_channel_id $1;
        }}
        # Interval poll: without a message id, the oldest message retained, at once.
        location ~ ^/poll/([A-Za-z0-9._:-]+)$ {{
            nchan_subscriber intervalpoll;
            nchan_channel_id $1;
        }}
    }}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_listens_on_loopback_only_and_writes_in_its_dir() {
        let dir = Path::new("/tmp/x");
        let text = write(dir, 4321, 20_000, &["uwsgi".into(), "scgi".into()]);
        assert!(text.contains("listen 127.0.0.1:4321;"));
        assert_eq!(text.matches("listen ").count(), 1);
        assert!(text.contains("daemon off;"));
        assert!(text.contains("pid /tmp/x/nginx.pid;"));
        assert!(text.contains("proxy_temp_path /tmp/x/proxy_temp;"));
        assert!(!text.contains("uwsgi_temp_path"));
        assert!(text.contains("worker_connections 19900;"));
    }
}
