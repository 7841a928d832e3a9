// SPDX-License-Identifier: MIT
/* Grad mode is per thread: a mode entered here is not seen by a thread
 * started meanwhile. */
#include <pthread.h>

#include <ag/ag.h>

#include "tap.h"

static void *worker(void *arg)
{
	bool *seen = arg;

	*seen = ag_is_grad_enabled();
	return NULL;
}

static int test_no_grad_not_seen_by_new_thread(void)
{
	pthread_t th;
	bool seen = false;
	struct ag_mode m = ag_no_grad_enter();

	pthread_create(&th, NULL, worker, &seen);
	pthread_join(th, NULL);
	ag_mode_exit(m);
	TAP_CHECK(seen);
	TAP_CHECK(ag_is_grad_enabled());
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_no_grad_not_seen_by_new_thread),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
