#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Usage: layers.sh SOURCE_ROOT
#
# Checks that the library's layers include one another one way only, as
# docs/architecture.md draws them:
#
#   core (engine/*) -> pool (engine/pool) -> autograd -> ops -> nn
#   simd/ beside: it sees only itself; every engine layer but pool may use it
#   dist/ (libag-dist) on top, a library of its own
#
# A file may include (with "...") headers of its own layer and of the
# layers its row below allows; nn/ and dist/ use the public API (<ag/...>)
# only.
# Each violation is printed as file:line and fails the test.
set -eu

root=${1:?usage: layers.sh SOURCE_ROOT}
cd "$root"

# the layer a path belongs to
layer_of() {
	case $1 in
	simd/*) echo simd ;;
	engine/pool/*) echo pool ;;
	engine/autograd/*) echo autograd ;;
	engine/ops/*) echo ops ;;
	engine/*) echo core ;;
	nn/*) echo nn ;;
	dist/*) echo dist ;;
	*) echo other ;;
	esac
}

# the layers a layer may include
allowed() {
	case $1 in
	simd) echo "simd" ;;
	core) echo "core simd" ;;
	pool) echo "core pool" ;;
	autograd) echo "core pool autograd simd" ;;
	ops) echo "core pool autograd ops simd" ;;
	nn) echo "nn" ;;
	dist) echo "dist" ;;
	*) echo "" ;;
	esac
}

# collapses a/b/../c to a/c
normalize() {
	printf '%s\n' "$1" | awk -F/ '{
		n = 0
		for (i = 1; i <= NF; i++) {
			if ($i == "..") n--
			else if ($i != "." && $i != "") p[++n] = $i
		}
		s = p[1]
		for (i = 2; i <= n; i++) s = s "/" p[i]
		print s
	}'
}

status=0
checked=0
for f in $(find engine simd nn dist -name '*.[ch]' 2>/dev/null | sort); do
	from=$(layer_of "$f")
	ok=$(allowed "$from")
	dir=$(dirname "$f")
	grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f" |
		sed 's/^\([0-9]*\):.*"\(.*\)".*/\1 \2/' >"${TMPDIR:-/tmp}/layers.$$" || true
	while read -r line hdr; do
		checked=$((checked + 1))
		# resolved as the compiler does: beside the file, then -I engine simd
		path=
		for cand in "$dir/$hdr" "engine/$hdr" "simd/$hdr"; do
			if [ -f "$cand" ]; then
				path=$(normalize "$cand")
				break
			fi
		done
		if [ -z "$path" ]; then
			echo "$f:$line: \"$hdr\" is not in the source tree"
			status=1
			continue
		fi
		to=$(layer_of "$path")
		case " $ok " in
		*" $to "*) ;;
		*)
			echo "$f:$line: $from includes $path ($to): not allowed (docs/architecture.md)"
			status=1
			;;
		esac
	done <"${TMPDIR:-/tmp}/layers.$$"
	rm -f "${TMPDIR:-/tmp}/layers.$$"
done
# One allocation choke point (engine/alloc.c): nothing else in the library
# calls the C allocator, so out-of-memory is reported one way and the fault
# injector reaches every allocation.  (Comments are skipped.)
direct=$(grep -rnE '(^|[^A-Za-z0-9_>.])(malloc|calloc|realloc|aligned_alloc|posix_memalign|strdup|free)[[:space:]]*\(' \
	engine simd --include='*.c' --include='*.h' |
	grep -v -e '^engine/alloc\.c:' -e '^simd/bench/' |
	grep -v -E '^[^:]*:[0-9]+:[[:space:]]*(/?\*|//)' |
	grep -v -E '/\*.*(malloc|free)\(\).*\*/' || true)
if [ -n "$direct" ]; then
	echo "direct C allocator calls outside engine/alloc.c (use ag__malloc & co.):"
	printf '%s\n' "$direct"
	status=1
fi
if [ "$checked" -eq 0 ]; then
	echo "layers.sh: no #include lines found under $root" >&2
	exit 1
fi
[ "$status" -eq 0 ] && echo "layers.sh: $checked includes, all one way; one allocator"
exit $status
