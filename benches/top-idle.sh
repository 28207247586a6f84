#!/usr/bin/env bash
# Idle CPU of `taskq top` (issue 17): runs the release binary in a tmux
# session at 80x24 against a root of N ready tasks, lets it settle, then
# reads its utime+stime from /proc/PID/stat over SECONDS seconds.
#   benches/top-idle.sh [N=10000] [SECONDS=30] [--agent]
# With --agent a factory runs a shell agent that prints a line a second
# (the screen follows the log, and its elapsed time ticks).
set -euo pipefail
n=${1:-10000}
secs=${2:-30}
agent=${3:-}
bin=${TASKQ_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/taskq}
root=$(mktemp -d /tmp/taskq-top-bench.XXXXXX)
sock=taskq-top-bench-$$
cleanup() {
    tmux -L "$sock" kill-server 2>/dev/null || true
    [ -n "${factory:-}" ] && kill "$factory" 2>/dev/null && wait "$factory" 2>/dev/null
    rm -rf "$root"
}
trap cleanup EXIT
"$bin" init "$root" >/dev/null 2>&1
for i in $(seq 1 "$n"); do
    printf -- '---\nid: TASK-%06d\ntitle: Task %d\nstatus: ready\ntags: [idle]\n---\nbody\n' "$i" "$i" \
        >"$root/tasks/todo/t$i.md"
done
if [ "$agent" = "--agent" ]; then
    printf -- '---\ntags: [job]\n---\n# Ticker\n```sh\nwhile :; do echo tick; sleep 1; done\n```\n' \
        >"$root/tasks/todo/ticker.md"
    "$bin" --root "$root" run >/dev/null 2>&1 &
    factory=$!
    sleep 3
fi
tmux -L "$sock" new-session -d -x 80 -y 24 "'$bin' --root '$root' top"
sleep 1
pid=$(tmux -L "$sock" list-panes -F '#{pane_pid}')
# The pane runs taskq directly (exec'd by the shell tmux starts).
for _ in $(seq 50); do
    comm=$(cat /proc/"$pid"/comm 2>/dev/null || true)
    [ "$comm" = taskq ] && break
    child=$(pgrep -P "$pid" -x taskq || true)
    [ -n "$child" ] && pid=$child && break
    sleep 0.1
done
sleep 4   # the first read of the root and the first draw
ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }
hz=$(getconf CLK_TCK)
start=$(ticks "$pid")
startup=$start
sleep "$secs"
end=$(ticks "$pid")
used=$((end - start))
awk -v u="$used" -v hz="$hz" -v s="$secs" -v st="$startup" -v n="$n" 'BEGIN {
    printf "taskq top, %d tasks: startup %.0f ms CPU; then %.0f ms CPU in %d s = %.3f%% of one core\n",
        n, st * 1000 / hz, u * 1000 / hz, s, u * 100 / hz / s }'
tmux -L "$sock" capture-pane -p | head -3
