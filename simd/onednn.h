/* SPDX-License-Identifier: MIT */
#ifndef AG_SIMD_ONEDNN_H
#define AG_SIMD_ONEDNN_H

/*
 * What gemm.c and gemm_pack.c share about calling oneDNN.  Its CPU runtime
 * here is OpenMP: a call runs on omp_get_max_threads() threads of the
 * calling thread.  libag's own pool gives the parallelism, so each call
 * gets one; the caller's setting is put back, as the thread may be the
 * application's own and run OpenMP regions of its own.
 */
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>

static inline int ag_k_omp_one_begin(void)
{
	int prev = omp_get_max_threads();

	if (prev != 1)
		omp_set_num_threads(1);
	return prev;
}

static inline void ag_k_omp_one_end(int prev)
{
	if (prev != 1)
		omp_set_num_threads(prev);
}

#endif /* AG_SIMD_ONEDNN_H */
