#!/usr/bin/env bash
# Runs the main job of Gradient on the bundled example flake: start a node,
# create a project for docs/examples/hello, evaluate and build it with Nix,
# then print the substituter URL and public key. The node keeps running.
set -euo pipefail
cd "$(dirname "$0")/../.."

data=${GRADIENT_DATA_DIR:-$PWD/gradient-data}
listen=${GRADIENT_LISTEN:-127.0.0.1:3000}
export GRADIENT_DATA_DIR=$data GRADIENT_SERVER=http://$listen
gradient=$PWD/bin/gradient

mkdir -p "$data"
# The example needs nothing from cache.nixos.org, so the demo runs offline.
"$gradient" serve --listen "$listen" --worker-store "$data/worker-store" --no-default-upstream >>"$data/node.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
	[ -s "$data/admin-token" ] && "$gradient" cache show main >/dev/null 2>&1 && break
	kill -0 "$pid" 2>/dev/null || { echo "demo: the node exited; see $data/node.log" >&2; exit 1; }
	sleep 0.1
done

"$gradient" project show demo/hello >/dev/null 2>&1 ||
	"$gradient" project create demo/hello --flake "path:$PWD/docs/examples/hello"
"$gradient" project evaluate demo/hello --wait
echo
"$gradient" cache show main
echo
echo "The node is running (PID $pid, log $data/node.log); stop it with: kill $pid"
