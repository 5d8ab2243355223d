# Reads `go test -v` output and prints, after everything, the output of each test that failed
# (its own lines only, parallel tests untangled), so that the end of a long log says what broke.
# Usage: awk -f e2e/scripts/test-failures.awk LOG
function top(name) { sub(/\/.*/, "", name); return name }
function flush(pkg,   t, n, msg, shown) {
	for (t in failed) {
		found = 1
		n = lines[t]
		# First what the test itself reported ("x_test.go:N: ..." lines and the first 20 deeper-
		# indented lines of each multi-line message; the rest of a log dump is elided), which a
		# lab's log dumps can push out of the tail below.
		printf "\n===== %s %s failed; its messages:\n", pkg, t
		msg = 0; shown = 0
		for (i = 1; i <= n && shown < 300; i++) {
			line = buf[t, i]
			if (line ~ /^ +[^ ]+_test\.go:[0-9]+: /) { match(line, /^ +/); msg = RLENGTH; more = 0; print line; shown++; continue }
			if (msg && match(line, /^ +/) && RLENGTH > msg) {
				if (++more <= 20) { print line; shown++ } else if (more == 21) { print "        [...]"; shown++ }
				continue
			}
			msg = 0
		}
		printf "===== %s %s: its output (last 120 lines):\n", pkg, t
		for (i = (n > 120 ? n - 119 : 1); i <= n; i++) print buf[t, i]
	}
	for (t in lines) for (i = 1; i <= lines[t]; i++) delete buf[t, i]
	delete lines; delete failed
}
{ tail[NR % 60] = $0 }
/^=== (RUN|CONT|NAME|PAUSE) / { cur = top($3) }
/^ *--- FAIL: / { failed[top($3)] = 1 }
/^--- FAIL: / { cur = top($3) }
/^--- (PASS|SKIP): / { cur = "" }
/^(FAIL|ok)[ \t]+[^ \t]+[ \t]/ { flush($2); cur = ""; next }
cur != "" { buf[cur, ++lines[cur]] = $0 }
END {
	if (found) exit
	# A build error, a panic or a timeout names no failing test: show how the log ends.
	printf "\n===== no failing test named; the log's last lines:\n"
	for (i = (NR > 60 ? NR - 59 : 1); i <= NR; i++) print tail[i % 60]
}
