/* SPDX-License-Identifier: MIT */
#ifndef AG_TESTS_TAP_H
#define AG_TESTS_TAP_H

/*
 * A plain-C TAP harness for the concurrency suites.  Criterion 2.4.1 cannot
 * start under ThreadSanitizer (its sandbox maps memory TSan reserves), so
 * these programs print TAP themselves and meson parses it.
 *
 *	static int test_x(void) { TAP_CHECK(a == b); return 0; }
 *	static const struct tap_test tests[] = { TAP_TEST(test_x), { 0 } };
 *	int main(void) { return tap_run(tests); }
 *
 * A test returns 0 on success; TAP_CHECK prints a diagnostic and returns 1.
 */
#include <stdio.h>

struct tap_test {
	const char *name;
	int (*fn)(void);
};

#define TAP_TEST(f)   \
	{             \
#f, f \
	}

#define TAP_CHECK(cond)                                                 \
	do {                                                            \
		if (!(cond)) {                                          \
			printf("# %s:%d: check failed: %s\n", __FILE__, \
			       __LINE__, #cond);                        \
			return 1;                                       \
		}                                                       \
	} while (0)

#define TAP_CHECKF(cond, ...)                                           \
	do {                                                            \
		if (!(cond)) {                                          \
			printf("# %s:%d: check failed: %s: ", __FILE__, \
			       __LINE__, #cond);                        \
			printf(__VA_ARGS__);                            \
			printf("\n");                                   \
			return 1;                                       \
		}                                                       \
	} while (0)

static inline int tap_run(const struct tap_test *tests)
{
	int n = 0, failed = 0;

	while (tests[n].name)
		n++;
	printf("1..%d\n", n);
	fflush(stdout);
	for (int i = 0; i < n; i++) {
		int bad = tests[i].fn() != 0;

		failed += bad;
		printf("%s %d - %s\n", bad ? "not ok" : "ok", i + 1,
		       tests[i].name);
		fflush(stdout);
	}
	return failed ? 1 : 0;
}

#endif /* AG_TESTS_TAP_H */
