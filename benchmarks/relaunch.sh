#!/bin/sh
# The recovery benchmark's restart action (and its floor, run alone):
#   relaunch.sh STAMPS ARGV...
# appends the time it started (unix seconds, ns) to STAMPS, then starts ARGV detached in its
# own session, like `setsid -f` advises for exec actions, and exits 0 at once.
stamps=$1
shift
date +%s.%N >> "$stamps"
exec setsid -f "$@" </dev/null >/dev/null 2>&1
