#!/usr/bin/env bash
# metaproxy's benchmarks in one command (`make bench`), as root on a machine with the e2e packages
# (`make deps`): Go micro-benchmarks of the hot paths, then the side-by-side run against the
# incumbent neutron-metadata-agent (e2e/bench), and on an ML2/OVN chassis beside the incumbent
# neutron-ovn-metadata-agent (e2e/internal/ovnlab). Writes bench-results/ (raw output + report.md).
# It starts network namespaces and the OVN lab: run it alone on the machine (the e2e suites hold
# `flock /tmp/metaproxy-e2e.lock`; so should whoever runs this beside them).
# Env: ENVOY_BIN (measure the real Envoy instead of the e2e stand-in), BENCH_DURATION (10s),
# BENCH_CONCURRENCY (10), BENCH_STORM_VMS (20), BENCH_RATES (open-loop ext_proc rates, 1000,4000),
# BENCH_TIME (Go benchtime, 1s), BENCH_SKIP_GO=1,
# BENCH_SKIP_SIDE=1, BENCH_SKIP_XDS=1, BENCH_XDS_NODES (1000), BENCH_XDS_NETWORKS (100),
# BENCH_XDS_MODES ("sotw delta"), BENCH_SKIP_OVN=1 (no ML2/OVN section), OUT (bench-results).
set -euo pipefail
cd "$(dirname "$0")/../.."
GO=${GO:-go}
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
BIN=$(mktemp -d /tmp/metaproxy-bench-bin.XXXXXX)
trap 'rm -rf "$BIN"' EXIT

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"

if [ "${BENCH_SKIP_GO:-0}" != 1 ]; then
  echo "== Go benchmarks (decision hot path, answer building, coalesced miss, signing, header mutation, 10k-network snapshot, cmd/xds poll of a fleet and xDS response, memory per cached VM)"
  $GO test -run '^$' -benchmem -benchtime "${BENCH_TIME:-1s}" -count 1 \
    -bench 'BenchmarkDecideHit|BenchmarkResponse|BenchmarkLookupHit|BenchmarkLookupMissCoalesced|BenchmarkSign|BenchmarkHeaderMutation|BenchmarkSnapshot10kNetworks|BenchmarkApply|BenchmarkXDSResponse' \
    ./pkg/decide ./pkg/answercache ./pkg/sign ./pkg/xds/serve ./e2e/internal/load | tee "$OUT/go-bench.txt"
  $GO test -run '^$' -benchtime 1x -count 1 -bench 'BenchmarkMemoryPerCachedVM' ./pkg/decide | tee -a "$OUT/go-bench.txt"
fi

if [ "${BENCH_SKIP_XDS:-0}" != 1 ]; then
  nodes=${BENCH_XDS_NODES:-1000} networks=${BENCH_XDS_NETWORKS:-100}
  echo "== cmd/xds at fleet scale: loadgen xds, $nodes nodes x $networks networks (${BENCH_XDS_MODES:-sotw delta}; ~20 s each), and Neutron requests per poll in agents mode"
  CGO_ENABLED=0 $GO build -trimpath -o "$BIN/" ./cmd/xds ./e2e/cmd/loadgen
  : > "$OUT/xds-fleet.txt"
  for mode in ${BENCH_XDS_MODES:-sotw delta}; do
    "$BIN/loadgen" xds --xds-bin "$BIN/xds" --nodes "$nodes" --networks "$networks" --mode "$mode" --timeout 2m --quiet \
      | tee -a "$OUT/xds-fleet.txt"
  done
  $GO test -run '^$' -bench BenchmarkNeutronAgentsPoll -benchtime 20x -count 1 ./pkg/xds/source | tee "$OUT/xds-neutron-requests.txt"
fi

if [ "${BENCH_SKIP_SIDE:-0}" != 1 ]; then
  if [ "$(id -u)" != 0 ]; then echo "the side-by-side run needs root (namespaces, neutron)"; exit 1; fi
  echo "== building"
  CGO_ENABLED=0 $GO build -trimpath -o "$BIN/" ./cmd/extproc ./cmd/xds ./e2e/cmd/standin ./e2e/cmd/loadgen
  echo "== side by side (takes ~5 minutes, the ML2/OVN section included)"
  $GO run -tags e2e ./e2e/bench --bin "$BIN" \
    --duration "${BENCH_DURATION:-10s}" --concurrency "${BENCH_CONCURRENCY:-10}" \
    --storm-vms "${BENCH_STORM_VMS:-20}" --out "$OUT/report.md" 2> "$OUT/bench.log" || {
      echo "side-by-side run failed; last lines of $OUT/bench.log:"; tail -30 "$OUT/bench.log"; exit 1; }
  echo "report: $OUT/report.md"
fi
