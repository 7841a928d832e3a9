// SPDX-License-Identifier: MIT
/*
 * Grad and inference mode, per thread.  The pool installs a graph task's
 * mode on a worker for the duration of a node and restores it after, so a
 * caller's mode never leaks into workers nor theirs back.
 */
#include <ag/autograd.h>
#include <ag/mode.h>

#include "internal.h"

AG_TLS struct ag_tls_mode ag__mode = { .grad = true };

bool ag_is_grad_enabled(void)
{
	return ag__mode.grad;
}

bool ag_set_grad_enabled(bool on)
{
	bool prev = ag__mode.grad;

	ag__mode.grad = on;
	return prev;
}

static struct ag_mode mode_save(void)
{
	return (struct ag_mode){ .grad = ag__mode.grad,
				 .inference = ag__mode.inference };
}

struct ag_mode ag_no_grad_enter(void)
{
	struct ag_mode prev = mode_save();

	ag__mode.grad = false;
	return prev;
}

struct ag_mode ag_enable_grad_enter(void)
{
	struct ag_mode prev = mode_save();

	ag__mode.grad = true;
	return prev;
}

/* Inference mode implies no-grad, as in PyTorch. */
struct ag_mode ag_inference_mode_enter(void)
{
	struct ag_mode prev = mode_save();

	ag__mode.grad = false;
	ag__mode.inference = 1;
	return prev;
}

void ag_mode_exit(struct ag_mode prev)
{
	ag__mode.grad = prev.grad;
	ag__mode.inference = prev.inference;
}

bool ag_is_inference_mode_enabled(void)
{
	return ag__mode.inference != 0;
}

void ag_set_detect_anomaly(bool on)
{
	ag__mode.anomaly = on;
}

bool ag_is_anomaly_enabled(void)
{
	return ag__mode.anomaly;
}
