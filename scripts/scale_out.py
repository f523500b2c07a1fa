"""Scale-out check: two server replicas behind nginx, a load test through it, one replica
killed mid-run.

    python scripts/scale_out.py --bundle DIR [--clients 4] [--frames 60] [--kill-after 8]
    python scripts/scale_out.py --demo       # the tiny demo model, a quick end-to-end check

Everything runs on 127.0.0.1: two `pocket-tts-onnx serve` replicas and nginx (the Debian
package; open source nginx has passive health checks only), whose config is written to a
temporary folder (`--keep` keeps it) and printed with --print-config. The script

1. waits for each replica's `/health`, then for `/health` through nginx;
2. runs scripts/load_test.py's levels through nginx (`--levels`);
3. keeps `--clients` clients streaming back to back through nginx, kills replica A
   (SIGKILL) after `--kill-after` seconds, keeps going for `--after` seconds, and checks:
   every request served by replica B completed, every request that started after the
   kill completed on B, and `/health` through nginx still answers. Streams that replica A was
   sending when it died are cut (counted, expected: nginx cannot resume a response).

nginx names the replica that served each response in an `X-Replica` header. Exit status 1
when a check fails. Random-weight bundles make noise: only speed and routing matter here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load_test  # noqa: E402
from load_test import client, one_stream, run_level, start_server, table  # noqa: E402

# Passive checks: a replica that refuses or drops a connection (`max_fails` times within
# `fail_timeout`) is left out for `fail_timeout`; a request whose connection failed before
# anything was sent goes to the other replica (`proxy_next_upstream`), even a POST.
NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    upstream pocket_tts {{
        server 127.0.0.1:{port_a} max_fails=1 fail_timeout=10s;
        server 127.0.0.1:{port_b} max_fails=1 fail_timeout=10s;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 20m;
        location / {{
            proxy_pass http://pocket_tts;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;            # stream audio as it is made
            proxy_request_buffering off;
            proxy_read_timeout 600s;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 2;
            add_header X-Replica $upstream_addr always;
        }}
    }}
}}
"""


def nginx_config(tmp: Path, port: int, port_a: int, port_b: int) -> str:
    # As root, nginx's workers switch to "nobody" unless told otherwise; keep the caller.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return NGINX_CONF.format(user=user, tmp=tmp, port=port, port_a=port_a, port_b=port_b)


def start_nginx(nginx: str, tmp: Path, port: int, port_a: int, port_b: int):
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_config(tmp, port, port_a, port_b))
    subprocess.run([nginx, "-t", "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
                   check=True, capture_output=True)  # fmt: skip
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client.wait_healthy(port, proc, timeout=30)
    return proc


def stop(proc, sig=signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def failover(port: int, rate: int, args, replica_a, port_a: int) -> dict:
    """Clients stream back to back; replica A is killed after `kill_after` seconds."""
    records: list[dict] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + args.kill_after + args.after
    killed: list[float] = []

    def work(i: int) -> None:
        seed = 1000 * i
        while time.monotonic() < stop_at:
            started = time.monotonic()
            r = one_stream(port, args.frames, seed, rate, args.timeout)
            r.update(started=started, ended=time.monotonic())
            seed += 1
            with lock:
                records.append(r)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(args.clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(args.kill_after)
    killed.append(time.monotonic())  # before the signal: streams cut by it end after this
    replica_a.send_signal(signal.SIGKILL)
    replica_a.wait(timeout=30)
    killed.append(time.monotonic())  # dead and reaped: its port refuses from here on
    for t in threads:
        t.join(timeout=args.timeout + args.after + 30)
    health_after = client.request(port, "GET", "/health", timeout=10).status
    kill, dead = killed
    a = f"127.0.0.1:{port_a}"

    def last_replica(r: dict) -> str | None:  # "A, B" when nginx moved on to B
        return r["replica"].split(",")[-1].strip() if r.get("replica") else None

    on_b = [r for r in records if last_replica(r) not in (None, a)]
    on_a = [r for r in records if last_replica(r) == a]
    # Cut: on A while it died (a request that reached A between the signal and its exit too).
    cut = [r for r in on_a if "error" in r and r["started"] < dead and r["ended"] > kill]
    after = [r for r in records if r["started"] > kill and r not in cut]
    return {
        "kill_at_s": kill - t0,
        "requests": len(records),
        "sent_to_a_before_kill": sum(r["started"] < kill for r in on_a),
        "served_by_b": len(on_b),
        "b_failed": sum("error" in r for r in on_b),
        "cut_on_a_by_kill": len(cut),
        "started_after_kill": len(after),
        "after_kill_failed": sum("error" in r for r in after),
        "after_kill_on_a": sum(last_replica(r) == a and r["started"] > dead for r in after),
        "after_kill_retried": sum("," in (r.get("replica") or "") for r in after),
        "other_failures": sum("error" in r for r in records)
        - len(cut)
        - sum("error" in r for r in on_b),  # fmt: skip
        "health_through_nginx_after_kill": health_after,
        "error_samples": [r["error"] for r in records if "error" in r][:3],
    }


def checks(f: dict) -> list[str]:
    """The failed checks (empty: all passed)."""
    failed = []
    if f["sent_to_a_before_kill"] == 0 or f["served_by_b"] == 0:
        failed.append("nginx did not spread requests over both replicas before the kill")
    if f["b_failed"]:
        failed.append(f"{f['b_failed']} requests on the live replica failed")
    if f["started_after_kill"] == 0:
        failed.append("no request started after the kill (raise --after)")
    if f["after_kill_failed"] or f["after_kill_on_a"]:
        failed.append("a request started after the kill failed or went to the dead replica")
    if f["other_failures"]:
        failed.append(f"{f['other_failures']} failures not explained by the kill")
    if f["health_through_nginx_after_kill"] != 200:
        failed.append("/health through nginx did not answer 200 after the kill")
    return failed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, help="an exported bundle (default: export one)")
    p.add_argument("--demo", action="store_true", help="export the tiny demo model instead")
    p.add_argument("--language", default="english", help="architecture to export (random init)")
    p.add_argument("--export-dir", default="load-test", help="where exported bundles go")
    p.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    p.add_argument("--threads", type=int, help="server --threads per replica")
    p.add_argument("--max-streams", type=int, default=8, help="per replica")
    p.add_argument("--max-queue", type=int, default=32, help="per replica")
    p.add_argument("--levels", default="1,2,4", help="load-test levels through nginx")
    p.add_argument("--frames", type=int, default=60, help="max_frames: per text chunk (12.5 per s)")
    p.add_argument("--clients", type=int, default=4, help="clients during the kill")
    p.add_argument("--kill-after", type=float, default=8.0, help="seconds before the kill")
    p.add_argument("--after", type=float, default=8.0, help="seconds of load after the kill")
    p.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--keep", action="store_true", help="keep the nginx folder (config, logs)")
    p.add_argument("--print-config", action="store_true", help="print nginx.conf and exit")
    p.add_argument("--out", type=Path, default=Path("load-test/scale-out.json"))
    args = p.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if args.frames < 1 or args.clients < 1 or min(levels, default=1) < 1:
        p.error("--frames, --clients and every level must be >= 1")
    if args.print_config:
        print(nginx_config(Path("/tmp/pocket-tts-nginx"), 8080, 8001, 8002), end="")
        return 0
    if not Path(args.nginx).is_file():
        p.error(f"nginx not found ({args.nginx}): apt-get install nginx, or pass --nginx")

    bundle = args.bundle or load_test.export_bundle(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pocket-tts-nginx-"))
    ports = [client.free_port() for _ in range(3)]
    port, port_a, port_b = ports
    procs: list = []
    try:
        with open(tmp / "replica-a.log", "wb") as log_a, open(tmp / "replica-b.log", "wb") as log_b:
            replica_a = start_server(args, bundle, port_a, log_a)
            procs.append(replica_a)
            procs.append(start_server(args, bundle, port_b, log_b))
        procs.append(start_nginx(args.nginx, tmp, port, port_a, port_b))
        rate = client.health(port)["model"]["sample_rate"]
        print(f"nginx on 127.0.0.1:{port} -> replicas :{port_a} (A), :{port_b} (B)", flush=True)
        one_stream(port, min(args.frames, 12), 0, rate, args.timeout)  # warm up A or B
        one_stream(port, min(args.frames, 12), 1, rate, args.timeout)  # and the other
        load = [run_level(port, None, n, args, rate) for n in levels]
        base = next((r["aggregate_xrt"] for r in load if r["clients"] == 1), None)
        print(table(load, base), flush=True)
        result = failover(port, rate, args, replica_a, port_a)
    finally:
        for proc in reversed(procs):
            stop(proc)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    failed = checks(result)
    report = {"bundle": str(bundle), "levels": load, "failover": result, "failed": failed}
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nfailover ({args.clients} clients, replica A killed at {result['kill_at_s']:.1f} s):")
    for key, value in result.items():
        print(f"  {key}: {value}")
    print("checks: " + ("all passed" if not failed else "FAILED: " + "; ".join(failed)))
    print(f"wrote {args.out}" + (f" (nginx folder {tmp})" if args.keep else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
