// SPDX-License-Identifier: MIT
/* Grad and inference mode: defaults, nesting, guards, threads. */
#include <pthread.h>

#include "common.h"

static const int64_t s23[2] = { 2, 3 };

Test(modes, defaults)
{
	cr_assert(ag_is_grad_enabled());
	cr_assert_not(ag_is_inference_mode_enabled());
	cr_assert_not(ag_is_anomaly_enabled());
	AG_ASSERT_NO_LEAKS();
}

Test(modes, set_grad_enabled_returns_previous)
{
	cr_assert(ag_set_grad_enabled(false));
	cr_assert_not(ag_is_grad_enabled());
	cr_assert_not(ag_set_grad_enabled(false));
	cr_assert_not(ag_set_grad_enabled(true));
	cr_assert(ag_is_grad_enabled());
	AG_ASSERT_NO_LEAKS();
}

Test(modes, enter_exit_nest)
{
	struct ag_mode m1, m2, m3;

	m1 = ag_no_grad_enter();
	cr_assert(m1.grad);
	cr_assert_not(ag_is_grad_enabled());
	m2 = ag_enable_grad_enter();
	cr_assert_not(m2.grad);
	cr_assert(ag_is_grad_enabled());
	m3 = ag_inference_mode_enter();
	cr_assert(m3.grad);
	cr_assert_eq(m3.inference, 0);
	cr_assert(ag_is_inference_mode_enabled());
	cr_assert_not(ag_is_grad_enabled(), "inference implies no-grad");
	ag_mode_exit(m3);
	cr_assert_not(ag_is_inference_mode_enabled());
	cr_assert(ag_is_grad_enabled());
	ag_mode_exit(m2);
	cr_assert_not(ag_is_grad_enabled());
	ag_mode_exit(m1);
	cr_assert(ag_is_grad_enabled());
	AG_ASSERT_NO_LEAKS();
}

Test(modes, no_grad_ops_do_not_record)
{
	struct ag_tensor *a = ag_ones(AG_F64, 2, s23);
	struct ag_tensor *y, *z;

	ag_tensor_set_requires_grad(a, true);
	{
		AG_NO_GRAD_SCOPE();
		y = ag_mul_scalar(a, 2);
		{
			AG_ENABLE_GRAD_SCOPE();
			z = ag_mul_scalar(a, 2);
		}
		cr_assert_not(ag_is_grad_enabled());
	}
	cr_assert(ag_is_grad_enabled());
	cr_assert_not(ag_tensor_requires_grad(y));
	cr_assert_null(ag_tensor_grad_fn(y));
	cr_assert(ag_tensor_requires_grad(z));
	cr_assert_not_null(ag_tensor_grad_fn(z));
	ag_tensor_put(a);
	ag_tensor_put(y);
	ag_tensor_put(z);
	AG_ASSERT_NO_LEAKS();
}

static bool grad_inside_return(void)
{
	AG_NO_GRAD_SCOPE();
	return ag_is_grad_enabled();
}

static int inference_inside_return(int depth)
{
	AG_INFERENCE_MODE_SCOPE();
	if (depth)
		return inference_inside_return(depth - 1);
	return ag_is_inference_mode_enabled();
}

Test(guards, restore_on_return)
{
	cr_assert_not(grad_inside_return());
	cr_assert(ag_is_grad_enabled());
	cr_assert_eq(inference_inside_return(3), 1);
	cr_assert_not(ag_is_inference_mode_enabled());
	cr_assert(ag_is_grad_enabled());
	AG_ASSERT_NO_LEAKS();
}

Test(guards, restore_on_break_and_continue)
{
	int seen = 0;

	for (int i = 0; i < 5; i++) {
		AG_NO_GRAD_SCOPE();
		cr_assert_not(ag_is_grad_enabled());
		seen++;
		if (i == 1)
			continue;
		if (i == 2)
			break;
	}
	cr_assert_eq(seen, 3);
	cr_assert(ag_is_grad_enabled());
	while (1) {
		AG_INFERENCE_MODE_SCOPE();
		cr_assert(ag_is_inference_mode_enabled());
		break;
	}
	cr_assert_not(ag_is_inference_mode_enabled());
	cr_assert(ag_is_grad_enabled());
	AG_ASSERT_NO_LEAKS();
}

Test(guards, restore_on_goto_out)
{
	{
		AG_NO_GRAD_SCOPE();
		if (!ag_is_grad_enabled())
			goto out;
		cr_assert_fail("not reached");
	}
out:
	cr_assert(ag_is_grad_enabled());
	AG_ASSERT_NO_LEAKS();
}

Test(guards, restore_a_disabled_state)
{
	ag_set_grad_enabled(false);
	{
		AG_ENABLE_GRAD_SCOPE();
		cr_assert(ag_is_grad_enabled());
	}
	cr_assert_not(ag_is_grad_enabled());
	ag_set_grad_enabled(true);
	AG_ASSERT_NO_LEAKS();
}

Test(inference, marks_tensors_and_skips_versions)
{
	struct ag_tensor *n = ag_ones(AG_F32, 2, s23);
	struct ag_tensor *t, *v, *nv;

	{
		AG_INFERENCE_MODE_SCOPE();
		t = ag_zeros(AG_F32, 2, s23);
		v = ag_transpose(t, 0, 1);
		nv = ag_slice(n, 0, 0, 1, 1);
		cr_assert(ag_tensor_is_inference(t));
		cr_assert(ag_tensor_is_inference(v));
		cr_assert_eq(ag_fill_(t, 3), 0, "%s", ag_errmsg());
		cr_assert_eq(ag_add_scalar_(v, 1), 0, "%s", ag_errmsg());
		cr_assert_eq(ag_tensor_version(t), 0);
		cr_assert_eq(ag_tensor_version(v), 0);
		/* a view of a normal tensor stays normal and is tracked */
		cr_assert_not(ag_tensor_is_inference(nv));
		cr_assert_eq(ag_fill_(nv, 2), 0, "%s", ag_errmsg());
	}
	cr_assert_eq(ag__get(t, 0), 4.0);
	cr_assert_eq(ag_tensor_version(t), 0);
	cr_assert_eq(ag_tensor_version(n), 1);
	cr_assert_not(ag_tensor_is_inference(n));
	/* as in torch: no in-place write outside inference mode */
	cr_assert_eq(ag_fill_(t, 1), -AG_EINFERENCE);
	AG_ASSERT_ERR(
		AG_EINFERENCE,
		"ag_fill_: inplace update to inference tensor outside InferenceMode");
	cr_assert_eq(ag__get(t, 0), 4.0);
	cr_assert_eq(ag_tensor_version(t), 0);
	cr_assert_eq(ag_tensor_set_requires_grad(t, true), -AG_EINFERENCE);
	AG_ASSERT_ERR(AG_EINFERENCE, "inference tensor");
	ag_tensor_put(n);
	ag_tensor_put(t);
	ag_tensor_put(v);
	ag_tensor_put(nv);
	AG_ASSERT_NO_LEAKS();
}

Test(inference, derived_tensors_and_exit)
{
	struct ag_tensor *a = ag_ones(AG_F64, 2, s23), *b, *c, *d;

	ag_tensor_set_requires_grad(a, true);
	{
		AG_INFERENCE_MODE_SCOPE();
		b = ag_mul_scalar(a, 2);
		c = ag_clone(a);
	}
	d = ag_mul_scalar(a, 2);
	cr_assert(ag_tensor_is_inference(b));
	cr_assert(ag_tensor_is_inference(c));
	cr_assert_not(ag_tensor_requires_grad(b));
	cr_assert_not(ag_tensor_is_inference(d));
	cr_assert(ag_tensor_requires_grad(d));
	ag_tensor_put(a);
	ag_tensor_put(b);
	ag_tensor_put(c);
	ag_tensor_put(d);
	AG_ASSERT_NO_LEAKS();
}

struct seen {
	bool grad;
	bool inference;
	bool grad_after;
};

static void *observe(void *arg)
{
	struct seen *s = arg;

	s->grad = ag_is_grad_enabled();
	s->inference = ag_is_inference_mode_enabled();
	/* this thread's own change is not seen by the creator */
	ag_inference_mode_enter();
	s->grad_after = ag_is_grad_enabled();
	return NULL;
}

Test(threads, mode_is_per_thread)
{
	struct seen s = { 0 };
	struct ag_mode m = ag_no_grad_enter();
	pthread_t th;

	cr_assert_eq(pthread_create(&th, NULL, observe, &s), 0);
	pthread_join(th, NULL);
	cr_assert(s.grad, "a new thread starts with grad on");
	cr_assert_not(s.inference);
	cr_assert_not(s.grad_after);
	cr_assert_not(ag_is_grad_enabled());
	cr_assert_not(ag_is_inference_mode_enabled());
	ag_mode_exit(m);
	cr_assert(ag_is_grad_enabled());
	AG_ASSERT_NO_LEAKS();
}

Test(threads, inference_in_main_not_seen)
{
	struct seen s = { 0 };
	pthread_t th;

	{
		AG_INFERENCE_MODE_SCOPE();
		cr_assert_eq(pthread_create(&th, NULL, observe, &s), 0);
		pthread_join(th, NULL);
		cr_assert(ag_is_inference_mode_enabled());
	}
	cr_assert(s.grad);
	cr_assert_not(s.inference);
	AG_ASSERT_NO_LEAKS();
}

Test(modes, anomaly_flag)
{
	ag_set_detect_anomaly(true);
	cr_assert(ag_is_anomaly_enabled());
	ag_set_detect_anomaly(false);
	cr_assert_not(ag_is_anomaly_enabled());
	AG_ASSERT_NO_LEAKS();
}
