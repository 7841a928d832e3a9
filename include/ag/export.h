/* SPDX-License-Identifier: MIT */
#ifndef AG_EXPORT_H
#define AG_EXPORT_H

/*
 * The shared library is built with hidden visibility; only declarations
 * marked AG_API are exported.
 */
#if defined(__GNUC__)
#define AG_API __attribute__((visibility("default")))
#else
#define AG_API
#endif

#endif /* AG_EXPORT_H */
