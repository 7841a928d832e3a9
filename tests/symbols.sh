#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Usage: symbols.sh LIBRARY [HEADER_DIR [NM]]
#
# HEADER_DIR may also be one header: that library's only (libag-dist).
#
# Fails if the shared library exports a defined dynamic symbol outside the
# public namespace: only ag_* and AG_* names may be exported, besides the
# linker's own markers.  Internal helpers are named ag__* and must stay
# hidden.  With HEADER_DIR (include/ag), every exported name must also be
# declared in one of its headers, so internal ag_* helpers (the simd
# kernels, ag_k_*) cannot leak out either; and every name declared AG_API
# there must be exported, so a definition that misses its header's
# visibility attribute (hidden by -fvisibility=hidden) is caught before a
# program linked with `pkg-config --libs ag` fails to link.
set -eu

lib=${1:?usage: symbols.sh LIBRARY [HEADER_DIR [NM]]}
hdrs=${2:-}
nm=${3:-nm}

if [ ! -f "$lib" ]; then
	echo "symbols.sh: $lib: no such file" >&2
	exit 1
fi

syms=$("$nm" -D --defined-only "$lib" |
	awk 'NF >= 3 { print $3 } NF == 2 { print $2 }')

bad=$(printf '%s\n' "$syms" | grep -v -E \
	-e '^(ag|AG)_' \
	-e '^(_init|_fini|_edata|_end|__bss_start|_DYNAMIC|_GLOBAL_OFFSET_TABLE_)$' \
	-e '^$' || true)
internal=$(printf '%s\n' "$syms" | grep -E '^(ag|AG)__' || true)
count=$(printf '%s\n' "$syms" | grep -c -E '^(ag|AG)_' || true)
undeclared=
if [ -n "$hdrs" ]; then
	for s in $(printf '%s\n' "$syms" | grep -E '^(ag|AG)_[^_]' || true); do
		grep -q -w -r --include='*.h' --include='*.h.in' -e "$s" "$hdrs" ||
			undeclared="$undeclared $s"
	done
fi

# Names declared AG_API in the headers.  A declaration runs from a line
# that starts with AG_API to its ';' or '{', possibly over several lines;
# its name is the identifier before the first '(' that is not an
# attribute, or the last identifier of a declaration without one.
api_names() {
	if [ -f "$1" ]; then
		files=$1
	else
		# dist.h is libag-dist's, a library of its own
		files=$(ls "$1"/*.h | grep -v '/dist\.h$')
	fi
	for h in $files; do
		awk '
		/^[ \t]*AG_API[ \t]/ { decl = ""; on = 1 }
		on {
			decl = decl " " $0
			if (decl !~ /[;{]/)
				next
			on = 0
			sub(/[;{].*/, "", decl)
			gsub(/__attribute__[ \t]*\(\([^)]*\)\)/, "", decl)
			if (match(decl, /[A-Za-z_][A-Za-z0-9_]*[ \t]*\(/)) {
				name = substr(decl, RSTART, RLENGTH)
				sub(/[ \t]*\($/, "", name)
			} else {
				sub(/[ \t]*(\[[^]]*\])?[ \t]*(=.*)?$/, "", decl)
				n = split(decl, w, /[^A-Za-z0-9_]+/)
				name = w[n]
			}
			print name
		}' "$h"
	done
}

missing=
if [ -n "$hdrs" ]; then
	declared=$(api_names "$hdrs" | sort -u)
	if [ -z "$declared" ]; then
		echo "symbols.sh: found no AG_API declaration in $hdrs" >&2
		exit 1
	fi
	missing=$(printf '%s\n' "$declared" |
		grep -v -x -F -e "$syms" || true)
fi

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
if [ -n "$undeclared" ]; then
	echo "symbols.sh: $lib exports names no header in $hdrs declares:"
	for s in $undeclared; do
		echo "  $s"
	done
	status=1
fi
if [ -n "$missing" ]; then
	echo "symbols.sh: $lib does not export these AG_API names of $hdrs" \
		"(is the header included where they are defined?):"
	for s in $missing; do
		echo "  $s"
	done
	status=1
fi
if [ "$count" -eq 0 ]; then
	echo "symbols.sh: $lib exports no ag_* symbol at all"
	status=1
fi
if [ "$status" -eq 0 ]; then
	echo "symbols.sh: $count ag_* symbols, nothing else;" \
		"every AG_API declaration exported"
fi
exit "$status"
