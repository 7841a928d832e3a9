/* SPDX-License-Identifier: MIT */
#ifndef AG_NN_SAFETENSORS_H
#define AG_NN_SAFETENSORS_H

#include <stddef.h>

#include <ag/checkpoint.h>
#include <ag/error.h>

/*
 * ag_safetensors_open() over bytes already in memory (the fuzz target's
 * entry); buf is copied.  what names the source in error messages.
 */
struct ag_safetensors *ag__safetensors_open_mem(const void *buf, size_t n,
						const char *what);

#endif /* AG_NN_SAFETENSORS_H */
