/* SPDX-License-Identifier: MIT */
#ifndef AG_NN_INTERNAL_H
#define AG_NN_INTERNAL_H

#include <stddef.h>
#include <ag/ag.h>

/*
 * nn/ builds on the public API only (tests/layers.sh); the one engine
 * service it shares is the thread's error slot, declared here as the
 * engine defines it (engine/error.c) rather than by including the engine.
 */
int ag__err(int code, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define nn_container_of(ptr, type, member) \
	((type *)((char *)(ptr)-offsetof(type, member)))

char *ag__nn_strdup(const char *s);

#endif /* AG_NN_INTERNAL_H */
