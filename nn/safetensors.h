/* SPDX-License-Identifier: MIT */
#ifndef AG_NN_SAFETENSORS_H
#define AG_NN_SAFETENSORS_H

#include <stddef.h>

#include <ag/checkpoint.h>

/*
 * nn/ includes only public headers, but it must report errors the way the
 * rest of the library does: this is the library's hidden error setter
 * (engine/error.c), which nn/ reaches through the same link.
 */
int ag__err(int code, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * ag_safetensors_open() over bytes already in memory (the fuzz target's
 * entry); buf is copied.  what names the source in error messages.
 */
struct ag_safetensors *ag__safetensors_open_mem(const void *buf, size_t n,
						const char *what);

#endif /* AG_NN_SAFETENSORS_H */
