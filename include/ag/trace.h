/* SPDX-License-Identifier: MIT */
#ifndef AG_TRACE_H
#define AG_TRACE_H

#include <ag/export.h>

/*
 * Execution trace in Chrome trace-event JSON (opens in Perfetto or
 * chrome://tracing): one lane per pool worker (and per other thread that
 * ran traced work), one slice per backward node, named by ag_node_name(),
 * and one per ag_parallel_for() chunk.
 *
 * AG_TRACE=path in the environment starts a trace when the pool first
 * starts; it is written at exit.  Costs one relaxed atomic load per slice
 * while off.
 */

/*
 * Starts recording into path (created or truncated now).  Returns 0,
 * -AG_EINVAL (path NULL, or a trace is already running) or -AG_EIO.
 */
AG_API int ag_trace_start(const char *path);

/*
 * Stops recording and writes the file.  Returns 0, -AG_EINVAL (no trace
 * running) or -AG_EIO.
 */
AG_API int ag_trace_stop(void);

#endif /* AG_TRACE_H */
