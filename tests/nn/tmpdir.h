/* SPDX-License-Identifier: MIT */
/*
 * A scratch directory per test process for the tests that write files:
 * tmpdir_make() in a suite's .init, tmpdir_remove() in its .fini.
 */
#ifndef AG_TESTS_NN_TMPDIR_H
#define AG_TESTS_NN_TMPDIR_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

static char dir[64];

/* tmpl: a mkdtemp template, "/tmp/name.XXXXXX" */
static inline void tmpdir_make(const char *tmpl)
{
	snprintf(dir, sizeof(dir), "%s", tmpl);
	cr_assert_not_null(mkdtemp(dir));
}

/* dir/name; two calls' results may be used together */
static inline char *path_in(const char *name)
{
	static char p[2][512];
	static int k;

	k ^= 1;
	snprintf(p[k], sizeof(p[k]), "%s/%s", dir, name);
	return p[k];
}

/* Entries of the directory besides . and .. */
static inline int count_entries(void)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	cr_assert_not_null(d);
	while ((e = readdir(d)))
		n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
	closedir(d);
	return n;
}

/* Empties and removes the directory (only the files the tests made). */
static inline void tmpdir_remove(void)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (rmdir(path_in(e->d_name)))
			unlink(path_in(e->d_name));
	}
	closedir(d);
	rmdir(dir);
}

#endif /* AG_TESTS_NN_TMPDIR_H */
