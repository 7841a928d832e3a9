// SPDX-License-Identifier: MIT
/*
 * libFuzzer target: random op sequences with random in-place writes, then
 * backward.  Four small tensors (some leaves that require grad, some
 * views of one another) go through up to sixteen steps: unary, binary
 * with broadcasting, matmul, views, and in-place writes into any of them
 * (leaves, views, saved tensors), with and without grad mode.  Then a
 * backward, sometimes with create_graph and a second backward.  Every
 * error must be a clean return (a version error, a leaf error, a shape
 * error...), and nothing may be left live.
 */
#include "fuzz.h"

#define NT 4

static struct ag_tensor *make(struct fuzz_in *in, enum ag_dtype dt)
{
	int ndim = fuzz_pick(in, 3);
	int64_t shape[2];
	struct ag_tensor *t;

	for (int d = 0; d < ndim; d++)
		shape[d] = 1 + fuzz_pick(in, 3);
	t = ag_full(dt, ndim, shape, 0.25 + fuzz_pick(in, 4));
	if (t && fuzz_pick(in, 2))
		ag_tensor_set_requires_grad(t, true);
	return t;
}

static struct ag_tensor *unary(struct fuzz_in *in, struct ag_tensor *a)
{
	switch (fuzz_pick(in, 8)) {
	case 0:
		return ag_exp(a);
	case 1:
		return ag_tanh(a);
	case 2:
		return ag_relu(a);
	case 3:
		return ag_sigmoid(a);
	case 4:
		return ag_log(a);
	case 5:
		return ag_sum(a);
	case 6:
		return ag_transpose(a, 0, -1);
	default:
		return ag_slice(a, fuzz_dim(in), fuzz_pick(in, 3) - 1,
				fuzz_pick(in, 4), 1 + fuzz_pick(in, 2));
	}
}

static struct ag_tensor *binary(struct fuzz_in *in, struct ag_tensor *a,
				struct ag_tensor *b)
{
	switch (fuzz_pick(in, 6)) {
	case 0:
		return ag_add(a, b);
	case 1:
		return ag_sub(a, b);
	case 2:
		return ag_mul(a, b);
	case 3:
		return ag_div(a, b);
	case 4:
		return ag_maximum(a, b);
	default:
		return ag_matmul(a, b);
	}
}

static void inplace(struct fuzz_in *in, struct ag_tensor *a,
		    struct ag_tensor *b)
{
	bool no_grad = fuzz_pick(in, 2);
	bool prev = ag_set_grad_enabled(!no_grad);

	switch (fuzz_pick(in, 7)) {
	case 0:
		ag_add_(a, b);
		break;
	case 1:
		ag_mul_(a, b);
		break;
	case 2:
		ag_copy_(a, b);
		break;
	case 3:
		ag_zero_(a);
		break;
	case 4:
		ag_fill_(a, fuzz_pick(in, 3));
		break;
	case 5:
		ag_relu_(a);
		break;
	default:
		ag_mul_scalar_(a, 2);
		break;
	}
	ag_set_grad_enabled(prev);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	struct ag_scope *s = ag_scope_begin();
	enum ag_dtype dt = fuzz_pick(&in, 2) ? AG_F64 : AG_F32;
	struct ag_tensor *t[NT], *leaf[NT], *last = NULL;
	int nsteps = fuzz_pick(&in, 17);

	for (int i = 0; i < NT; i++)
		leaf[i] = t[i] = make(&in, dt);
	for (int i = 0; i < nsteps; i++) {
		struct ag_tensor *a = t[fuzz_pick(&in, NT)];
		struct ag_tensor *b = t[fuzz_pick(&in, NT)];
		struct ag_tensor *r = NULL;

		switch (fuzz_pick(&in, 3)) {
		case 0:
			r = unary(&in, a);
			break;
		case 1:
			r = binary(&in, a, b);
			break;
		default:
			inplace(&in, a, b);
			break;
		}
		if (r) {
			t[fuzz_pick(&in, NT)] = r;
			last = r;
		}
		ag_clear_error();
	}
	if (last) {
		struct ag_backward_opts o = { .create_graph = fuzz_pick(&in, 2),
					      .retain_graph = true };
		struct ag_tensor *loss = ag_sum(last);

		if (loss && ag_tensor_requires_grad(loss) &&
		    !ag_backward(loss, NULL, &o) && o.create_graph) {
			for (int i = 0; i < NT; i++) {
				struct ag_tensor *g = ag_tensor_grad(t[i]);

				if (g && ag_tensor_requires_grad(g))
					ag_backward(ag_sum(g), NULL, NULL);
			}
		}
	}
	/* .grad made with create_graph points back at its leaf: break it */
	for (int i = 0; i < NT; i++)
		if (leaf[i])
			ag_tensor_zero_grad(leaf[i]);
	ag_clear_error();
	ag_scope_end(s);
	fuzz_check_no_leaks();
	return 0;
}
