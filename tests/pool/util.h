/* SPDX-License-Identifier: MIT */
#ifndef AG_TESTS_POOL_UTIL_H
#define AG_TESTS_POOL_UTIL_H

#include <stdint.h>
#include <time.h>

#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif
#ifndef UNDER_TSAN
#define UNDER_TSAN 0
#endif

/* Sizes shrink under ThreadSanitizer, which is ~10x slower. */
#define SCALE(n) (UNDER_TSAN ? (n) / 8 + 1 : (n))

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Busy work that the compiler cannot drop. */
static inline void burn(int iters)
{
	volatile uint64_t x = 1;

	for (int i = 0; i < iters; i++)
		x = x * 6364136223846793005ull + 1;
}

#endif /* AG_TESTS_POOL_UTIL_H */
