/* SPDX-License-Identifier: MIT */
/*
 * The training step the dist suites compare N ranks with one process by:
 * SGD (lr 0.1, momentum 0.9) on mse(m(x), y).
 */
#ifndef AG_TESTS_DIST_SGD_STEP_H
#define AG_TESTS_DIST_SGD_STEP_H

#include <ag/ag.h>
#include <ag/dist.h>
#include <ag/nn.h>
#include <ag/optim.h>

static inline struct ag_optim *sgd(struct ag_module *m)
{
	struct ag_tensor **p;
	int n;

	ag_module_parameters(m, &p, &n);
	return ag_sgd_new(p, n, 0.1, 0.9, 0);
}

/* One step; d NULL: plain, without DDP.  0 or -AG_E*. */
static inline int step(struct ag_module *m, struct ag_ddp *d,
		       struct ag_optim *o, struct ag_tensor *x,
		       struct ag_tensor *y)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *out = d ? ag_ddp_forward(d, x) :
				    ag_module_forward(m, x);
	struct ag_tensor *loss = ag_mse_loss(out, y);
	int rc;

	ag_optim_zero_grad(o);
	rc = loss ? ag_backward(loss, NULL, NULL) : -ag_errcode();
	if (!rc)
		rc = ag_optim_step(o);
	ag_scope_end(s);
	return rc;
}

#endif /* AG_TESTS_DIST_SGD_STEP_H */
