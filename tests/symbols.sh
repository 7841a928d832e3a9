#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Usage: symbols.sh LIBRARY [NM]
#
# Fails if the shared library exports a defined dynamic symbol outside the
# public namespace: only ag_* functions and AG_* names may be exported,
# besides the linker's own markers.  Internal helpers are named ag__* and
# must stay hidden, so they fail too.
set -eu

lib=${1:?usage: symbols.sh LIBRARY [NM]}
nm=${2:-nm}

if [ ! -f "$lib" ]; then
	echo "symbols.sh: $lib: no such file" >&2
	exit 1
fi

syms=$("$nm" -D --defined-only "$lib" | awk 'NF >= 3 { print $3 } NF == 2 { print $2 }')

bad=$(printf '%s\n' "$syms" | grep -v -E \
	-e '^(ag|AG)_' \
	-e '^(_init|_fini|_edata|_end|__bss_start|_DYNAMIC|_GLOBAL_OFFSET_TABLE_)$' \
	-e '^$' || true)
internal=$(printf '%s\n' "$syms" | grep -E '^(ag|AG)__' || true)
count=$(printf '%s\n' "$syms" | grep -c -E '^ag_' || true)

status=0
if [ -n "$bad" ]; then
	echo "symbols.sh: $lib exports symbols outside ag_*/AG_*:"
	printf '%s\n' "$bad" | sed 's/^/  /'
	status=1
fi
if [ -n "$internal" ]; then
	echo "symbols.sh: $lib exports internal ag__* symbols:"
	printf '%s\n' "$internal" | sed 's/^/  /'
	status=1
fi
if [ "$count" -eq 0 ]; then
	echo "symbols.sh: $lib exports no ag_* symbol at all"
	status=1
fi
[ "$status" -eq 0 ] && echo "symbols.sh: $count ag_* symbols, nothing else"
exit "$status"
