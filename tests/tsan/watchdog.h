/* SPDX-License-Identifier: MIT */
#ifndef AG_TESTS_WATCHDOG_H
#define AG_TESTS_WATCHDOG_H

/*
 * A deadlock must fail a test, not hang CI: watchdog_arm(what, s) starts
 * (once) a thread that, if the armed step is still running s seconds
 * later, prints a TAP "not ok" naming it and ends the process with
 * _exit(1).  watchdog_arm again re-arms; watchdog_disarm() stops the
 * clock.  It only bounds a wait; the tests measure no time.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static atomic_llong watchdog_deadline; /* CLOCK_MONOTONIC ns; 0: off */
static const char *_Atomic watchdog_what;
static pthread_once_t watchdog_once = PTHREAD_ONCE_INIT;

static inline long long watchdog_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *watchdog_main(void *arg)
{
	(void)arg;
	for (;;) {
		long long d = atomic_load(&watchdog_deadline);

		usleep(50000);
		if (d && d == atomic_load(&watchdog_deadline) &&
		    watchdog_now() > d) {
			printf("not ok - watchdog: '%s' hung (deadlock?)\n",
			       atomic_load(&watchdog_what));
			fflush(stdout);
			_exit(1);
		}
	}
	return NULL;
}

static void watchdog_start(void)
{
	pthread_t th;

	if (pthread_create(&th, NULL, watchdog_main, NULL) == 0)
		pthread_detach(th);
}

static inline void watchdog_arm(const char *what, int seconds)
{
	pthread_once(&watchdog_once, watchdog_start);
	atomic_store(&watchdog_what, what);
	atomic_store(&watchdog_deadline,
		     watchdog_now() + (long long)seconds * 1000000000LL);
}

static inline void watchdog_disarm(void)
{
	atomic_store(&watchdog_deadline, 0);
}

#endif /* AG_TESTS_WATCHDOG_H */
