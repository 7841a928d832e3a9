/* SPDX-License-Identifier: MIT */
/*
 * The kernels, written once over the vector layer in vec.h.  kernels.c
 * includes this file twice, with
 *   T     the element type (float, double)
 *   V(x)  the vector layer's name for x at that type (vf_x, vd_x)
 *   W     lanes per vector
 *   F(x)  x with the type suffix (x_f32, x_f64)
 * No include guard on purpose.
 *
 * Every public kernel takes spans (base, stride).  The work is done by a
 * contiguous kernel ("_c") that runs whole vectors and one masked tail.
 * Spans that are not contiguous go through small on-stack chunks: strided
 * inputs are gathered, a broadcast input (stride 0) fills its chunk once,
 * strided outputs are scattered back.  A gradient output with stride 0 is a
 * broadcast operand's gradient: the span's contributions are summed
 * (pairwise, in f64) and added to that one element.
 */

#define VT V(t)

/* Elements per on-stack chunk: small enough for L1, large enough that the
 * per-chunk overhead vanishes. */
#define CH 512

#include "kern_math.h"
#include "kern_span.h"
#include "kern_reduce.h"

#undef VT
#undef CH
#undef SUM_BLK
#undef CHLEN
#undef LOOP1
#undef LOOPB
#undef LOOPG
#undef LOOPX
#undef LOOPY
#undef LOOP2
#undef LOOP2B
