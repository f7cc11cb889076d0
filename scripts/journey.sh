#!/usr/bin/env bash
# The user's journey, end to end, on a model autoprune has never seen (tests/fixtures/usermodel.py, also the tests' foreign model):
# profile it on `local`, search it on `local` and `jetson-nano`, print the front, export a point with the
# default flags, verify it, resume, and read it all back through the dashboard's HTTP API. It prints the local
# export's prediction error (predicted vs measured latency) before the tally.
# JOURNEY_MODEL=path/to/model.py (with a `build()` function) runs it on another model.
#
# Run it from the project's root after `make setup`: `bash scripts/journey.sh` (it uses the project's
# .venv/bin/autoprune when there, else `autoprune` on PATH). It works in a fresh temporary folder, as a
# new user would, and leaves the project's own results/ alone. Each step must exit 0 and print no
# traceback; a search must fail no trial.
# About 10 minutes on a 2-core machine. Prints one line per step and "N/M steps passed" last.
set -u
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/.." && pwd)
AP=${AP:-$( [ -x "$root/.venv/bin/autoprune" ] && echo "$root/.venv/bin/autoprune" || command -v autoprune )}
[ -n "$AP" ] || { echo "no autoprune: run 'make setup' in the project first"; exit 2; }
J=$(mktemp -d /tmp/journey.XXXXXX); cp "${JOURNEY_MODEL:-$here/../tests/fixtures/usermodel.py}" "$J/usermodel.py"; cd "$J" || exit 2
M=usermodel.py:build; ok=0; n=0

step() {  # step NAME CHECK-REGEX-OR-EMPTY -- command...
  local name=$1 want=$2; shift 3; n=$((n+1))
  local t0=$SECONDS out rc
  out=$("$@" 2>&1); rc=$?
  printf '%s\n' "$out" > "$J/step$n.log"
  local why=""
  [ $rc -eq 0 ] || why="exit $rc"
  grep -q Traceback <<<"$out" && why="$why traceback"
  [ -n "$want" ] && ! grep -Eq "$want" <<<"$out" && why="$why missing /$want/"
  if [ -z "$why" ]; then ok=$((ok+1)); printf 'ok    %-34s %4ss\n' "$name" $((SECONDS-t0))
  else printf 'FAIL  %-34s %4ss  %s: %s\n' "$name" $((SECONDS-t0)) "$why" "$(grep -v '^\s*$' <<<"$out" | tail -1 | cut -c1-160)"; fi
}

step "profile local (user model)"   ""                      -- "$AP" profile --target local --model $M --plans 12
step "search local, 8 trials"       " 0 failed"             -- "$AP" search --target local --model $M --trials 8 --study j-local --no-progress
step "pareto local"                 ""                      -- "$AP" pareto --study j-local
step "export local, default flags"  ""                      -- "$AP" export --study j-local --min-accuracy 0 --no-progress
step "export wrote onnx+report+tvm" ""                      -- bash -c 'ls results/j-local/export-*/model.onnx results/j-local/export-*/report.json results/j-local/export-*/model_tvm.so'
step "verify the local export"      ""                      -- bash -c '"$0" verify results/j-local/export-*' "$AP"
step "search jetson-nano, 8 trials" " 0 failed"             -- "$AP" search --target jetson-nano --model $M --trials 8 --study j-nano --no-progress
step "export jetson-nano, defaults" ""                      -- "$AP" export --study j-nano --min-accuracy 0 --no-progress
step "resume local, 2 more"         ""                      -- "$AP" search --study j-local --trials 2 --no-progress
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$AP" dashboard --port "$port" > "$J/dashboard.log" 2>&1 & dpid=$!
for _ in $(seq 30); do curl -sf "http://127.0.0.1:$port/api/studies" >/dev/null 2>&1 && break; sleep 1; done
step "dashboard lists both studies"  "j-local.*j-nano|j-nano.*j-local" -- curl -sf "http://127.0.0.1:$port/api/studies"
kill "$dpid" 2>/dev/null; wait "$dpid" 2>/dev/null
grep -hE "prediction error" "$J"/step4.log | sed 's/^ */local export: /' | head -1
echo "logs: $J"
echo "$ok/$n steps passed"
[ $ok -eq $n ]
