#!/usr/bin/env bash
# End-to-end test of `dsv4 chat` in a real terminal (tmux) on the built-in demo model.
# Usage: tests/chat_tmux.sh PATH/TO/dsv4
# Checks: stats line after each answer; the second turn prefills only the new suffix (the
# conversation state is kept); /nothink, /think, /effort, unknown commands, /reset (fresh state),
# a """ multi-line block;
# Ctrl-C at the prompt and during an answer; /quit and Ctrl-D exit with status 0.
# The demo model has random weights, so the answers are random text; only the framing is checked.
set -uo pipefail

DSV4=${1:?usage: chat_tmux.sh PATH/TO/dsv4}
DSV4=$(realpath "$DSV4")
command -v tmux >/dev/null || { echo "FAIL: tmux is not installed (apt-get install tmux)"; exit 1; }
[[ -x $DSV4 ]] || { echo "FAIL: $DSV4 is not an executable"; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/dsv4-chat-test.XXXXXX")
SOCK="$TMP/tmux.sock"  # a private tmux server: never touches the user's sessions
SESSION="dsv4chat-$$"
T() { tmux -S "$SOCK" "$@"; }
cleanup() {
  T kill-server >/dev/null 2>&1
  rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*"
  echo "---- pane ----"
  T capture-pane -p -J -S - -t "$SESSION" 2>/dev/null | tail -n 60
  echo "--------------"
  exit 1
}

cat >"$TMP/tmux.conf" <<'EOF'
set -g history-limit 100000
set -g remain-on-exit on
EOF

# start NAME ARGS...: runs dsv4 chat in a fresh tmux window/session.
start() {
  rm -f "$TMP/status"
  # The status goes to a file: tmux does not always report #{pane_dead_status}.
  cat >"$TMP/run.sh" <<EOF
export DSV4_DEMO_DIR="$TMP/demo"
"$DSV4" chat --threads 2 $*
echo \$? >"$TMP/status"
EOF
  T -f "$TMP/tmux.conf" new-session -d -s "$SESSION" -x 220 -y 50 "bash $TMP/run.sh" ||
    fail "cannot start tmux"
}
stop() { T kill-session -t "$SESSION" >/dev/null 2>&1; }

pane() { T capture-pane -p -J -S - -t "$SESSION"; }
STATS_RE='\[prefill ([0-9]+) tokens [0-9.]+ tok/s, decode ([0-9]+) tokens [0-9.inf]+ tok/s, context ([0-9]+)/[0-9]+'
count() { pane | grep -cE -- "$1"; }

# wait_for REGEX MIN_COUNT TIMEOUT_S WHAT
wait_for() {
  local deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    (($(count "$1") >= $2)) && return 0
    [[ $(T display-message -p -t "$SESSION" '#{pane_dead}') == 1 ]] && fail "dsv4 chat exited while waiting for $4"
    sleep 0.2
  done
  fail "timeout after $3 s waiting for $4"
}
send() { T send-keys -t "$SESSION" -l -- "$1" && T send-keys -t "$SESSION" Enter; }
# stats K FIELD: field 1 = prefill tokens, 2 = decode tokens, 3 = context of the K-th stats line.
stats() {
  local line
  line=$(pane | grep -oE -- "$STATS_RE" | sed -n "${1}p")
  [[ $line =~ $STATS_RE ]] && echo "${BASH_REMATCH[$2]}"
}
wait_exit() {
  local deadline=$((SECONDS + 20))
  while ((SECONDS < deadline)); do
    if [[ -s $TMP/status ]]; then
      local status
      status=$(<"$TMP/status")
      [[ $status == 0 ]] || fail "$1: exit status $status"
      return 0
    fi
    sleep 0.2
  done
  fail "$1: dsv4 chat did not exit"
}

# ---- session 1: turns, state reuse, commands, /quit
start -n 24 --seed 7
wait_for 'dsv4 chat: ' 1 180 "the banner (demo model creation and load)"
wait_for '^> ' 1 30 "the first prompt"

# A first message longer than 256 tokens (it gets the prefill progress bar).
long=""
for _ in $(seq 40); do long+="the quick brown fox jumps over the lazy dog "; done
send "$long"
wait_for "$STATS_RE" 1 120 "the stats line of turn 1"
p1=$(stats 1 1) d1=$(stats 1 2) c1=$(stats 1 3)
((p1 > 256)) || fail "turn 1 prefilled $p1 tokens, expected the whole long message (> 256)"
((c1 >= p1 + d1 && c1 <= p1 + d1 + 1)) || fail "turn 1 context $c1 != prefill $p1 + decode $d1 (+1)"

send "Hello again"
wait_for "$STATS_RE" 2 120 "the stats line of turn 2"
p2=$(stats 2 1) d2=$(stats 2 2) c2=$(stats 2 3)
# "<｜User｜>Hello again<｜Assistant｜><think>" plus the EOS closing turn 1 (and its last token).
((p2 <= 10)) || fail "turn 2 prefilled $p2 tokens: history was re-prefilled (expected only the new suffix)"
((c2 - c1 >= p2 + d2 - 2 && c2 - c1 <= p2 + d2)) ||
  fail "turn 2: context grew from $c1 to $c2, not by the new prefill $p2 + decode $d2"
echo "ok: turn 1 prefill $p1, turn 2 prefill $p2 (context $c1 -> $c2)"

send "/nothink"
wait_for '\(thinking mode off\)' 1 10 "/nothink"
send "Short answer please"
wait_for "$STATS_RE" 3 120 "the stats line of turn 3"
p3=$(stats 3 1) c3=$(stats 3 3)
((p3 <= 12)) || fail "turn 3 prefilled $p3 tokens: history was re-prefilled"
send "/think"
wait_for '\(thinking mode on\)' 1 10 "/think"

send "/effort low"  # the demo model uses the preview effort profile: no low tier
wait_for '^(> )?error: .*low' 1 10 "an error for /effort low"  # typed-ahead input may put the prompt first
send "/effort max"
wait_for '\(reasoning effort max from the next conversation' 1 10 "/effort max"
send "/frobnicate"
wait_for 'unknown command: /frobnicate' 1 10 "the unknown-command message"
send "/help"
wait_for '^(> )?/reset ' 1 10 "/help"

send "/reset"
wait_for '\(new conversation\)' 1 10 "/reset"
send "Hello again"
wait_for "$STATS_RE" 4 120 "the stats line after /reset"
p4=$(stats 4 1) d4=$(stats 4 2) c4=$(stats 4 3)
# Fresh state: the context is just this prompt (BOS + effort text + turn) and its answer.
((c4 >= p4 + d4 && c4 <= p4 + d4 + 1)) || fail "after /reset the context is $c4, not prefill $p4 + decode $d4"
((c4 < c3)) || fail "after /reset the context ($c4) did not shrink (was $c3)"
((p4 > p2 + 50)) || fail "after /reset with /effort max, prefill $p4 lacks the effort text"
echo "ok: /nothink, /think, /effort, /help, /reset (context $c3 -> $c4)"

# A """ block is one message (one turn), not three.
send '"""'
send "first line"
send "second line"
send '"""'
wait_for "$STATS_RE" 5 120 'the stats line of a """ block'
sleep 1
(($(count "$STATS_RE") == 5)) || fail 'a """ block was sent as more than one message'
echo 'ok: """ block'

send "/quit"
wait_exit "/quit"
echo "ok: /quit"
stop

# ---- session 2: Ctrl-C at the prompt and during an answer, Ctrl-D
start -n 100000 --seed 3 --no-think
wait_for '^> ' 1 60 "the first prompt (session 2)"
T send-keys -t "$SESSION" C-c
wait_for 'Ctrl-C stops an answer' 1 10 "the Ctrl-C hint at the prompt"
# interrupt N: presses Ctrl-C every 2 s until the N-th stats line shows the answer stopped (a press
# that lands before the turn starts only prints the hint).
interrupt() {
  local deadline=$((SECONDS + 60))
  while ((SECONDS < deadline)); do
    sleep 2
    T send-keys -t "$SESSION" C-c
    (($(count "$STATS_RE"', stopped\]') >= $1)) && return 0
  done
  fail "Ctrl-C did not stop answer $1"
}
send "Tell me a very long story"
interrupt 1
send "Still there?"
interrupt 2
ps=$(stats 2 1)
((ps <= 12)) || fail "after Ctrl-C the next turn prefilled $ps tokens (expected only the new suffix)"
T send-keys -t "$SESSION" C-d
wait_exit "Ctrl-D"
echo "ok: Ctrl-C stops an answer, session continues; Ctrl-D exits"
stop

echo "PASS: dsv4 chat tmux test"
