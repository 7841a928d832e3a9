#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Usage: sh tests/install_check.sh BUILDDIR
#
# Installs BUILDDIR into a staging directory (meson install --destdir),
# then builds a small program against the staged headers and library the
# way a user would, with `cc prog.c $(pkg-config --cflags --libs ag)`, runs
# it, checks the installed library's exported symbols, and links the same
# program statically against libag.a with `pkg-config --static`.
# KEEP_STAGE=1 keeps the staging directory for a look.
set -eu

build=${1:?usage: install_check.sh BUILDDIR}
here=$(cd "$(dirname "$0")" && pwd)
cc=${CC:-cc}
stage=$(mktemp -d "${TMPDIR:-/tmp}/ag-install.XXXXXX")
trap '[ -n "${KEEP_STAGE:-}" ] || rm -rf "$stage"' EXIT INT TERM

meson install -C "$build" --destdir "$stage" --quiet >/dev/null

pc=$(find "$stage" -name ag.pc | head -n 1)
if [ -z "$pc" ]; then
	echo "install_check: no ag.pc was installed" >&2
	exit 1
fi
# ag.pc names the real prefix.  A copy whose prefix points into $stage
# makes its paths resolve there, while the packages it requires (sleef,
# BLAS) are still found in the system.  (pkg-config --define-prefix guesses
# wrong for multiarch libdirs, and PKG_CONFIG_SYSROOT_DIR would move the
# system packages' paths into $stage too.)
prefix=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --variable=prefix ag)
mkdir "$stage/pc"
sed "s|^prefix=.*|prefix=$stage$prefix|" "$pc" >"$stage/pc/ag.pc"
PKG_CONFIG_PATH=$stage/pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export PKG_CONFIG_PATH

cat >"$stage/prog.c" <<'PROG'
#include <stdio.h>
#include <string.h>

#include <ag/ag.h>

int main(void)
{
	struct ag_scope *s = ag_scope_begin();
	int64_t shape[2] = { 2, 3 };
	struct ag_tensor *x = ag_full(AG_F64, 2, shape, 0.5);
	struct ag_tensor *y, *loss, *g;

	ag_tensor_set_requires_grad(x, true);
	y = ag_mul(x, x);
	loss = ag_sum(y);
	if (ag_backward(loss, NULL, NULL)) {
		fprintf(stderr, "backward: %s\n", ag_errmsg());
		return 1;
	}
	g = ag_tensor_grad(x);
	if (!g || ag_tensor_item(loss) != 1.5 ||
	    ((double *)ag_tensor_data(g))[5] != 1.0) {
		fprintf(stderr, "wrong result\n");
		return 1;
	}
	{
		AG_NO_GRAD_SCOPE();
		if (ag_tensor_requires_grad(ag_mul(x, x)))
			return 1;
	}
	if (ag_reshape(x, 2, (int64_t[]){ 4, 4 }) ||
	    ag_errcode() != AG_ESHAPE ||
	    !strstr(ag_errmsg(), "is invalid for a tensor of 6 elements"))
		return 1;
	ag_scope_end(s);
	printf("installed libag works\n");
	return 0;
}
PROG

flags=$(pkg-config --cflags --libs ag)
# shellcheck disable=SC2086 # flags are words
"$cc" -std=c11 -Wall -Werror -o "$stage/prog" "$stage/prog.c" $flags

libdir=$(pkg-config --variable=libdir ag)
LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$stage/prog"

# The installed library exports only ag_* names.
so=$(find "$libdir" -name 'libag.so.*' -type f | head -n 1)
sh "$here/symbols.sh" "$so" "$(pkg-config --variable=includedir ag)/ag"

# A static link needs ag.pc to name libag's own dependencies.  libag.a is
# named by path; its -lag is dropped so the shared one cannot sneak in.
sflags=$(pkg-config --static --cflags --libs ag | sed 's/\(^\| \)-lag\( \|$\)/ /g')
# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Werror -o "$stage/prog_static" "$stage/prog.c" \
	"$libdir/libag.a" $sflags
if readelf -d "$stage/prog_static" | grep -q 'NEEDED.*libag'; then
	echo "install_check: the static program links libag.so" >&2
	exit 1
fi
"$stage/prog_static" >/dev/null
echo "install_check: shared and static builds against the staged install run"
