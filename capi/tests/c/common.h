/* Helpers shared by the C tests: checks that print where they failed and
 * exit non-zero, and a monotonic clock. */
#ifndef ORCWIRE_TEST_COMMON_H
#define ORCWIRE_TEST_COMMON_H

/* clock_gettime, nanosleep under -std=c11; include this file first. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "orcwire.h"

#define CHECK(cond)                                                                   \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__, __LINE__, \
              #cond, orcwire_last_error());                                           \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

/* Checks that `expr` returns `want`, printing both names otherwise. */
#define CHECK_STATUS(expr, want)                                                        \
  do {                                                                                  \
    orcwire_status got_ = (expr);                                                       \
    if (got_ != (want)) {                                                               \
      fprintf(stderr, "%s:%d: %s returned %s, wanted %s (last error: %s)\n", __FILE__, \
              __LINE__, #expr, orcwire_status_name((uint32_t)got_),                      \
              orcwire_status_name((uint32_t)(want)), orcwire_last_error());             \
      exit(1);                                                                          \
    }                                                                                   \
  } while (0)

#define CHECK_OK(expr) CHECK_STATUS(expr, ORCWIRE_STATUS_OK)

#define MS 1000000LL
#define SEC 1000000000LL

static inline long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * SEC + ts.tv_nsec;
}

static inline void sleep_ns(long long ns) {
  struct timespec ts = {(time_t)(ns / SEC), (long)(ns % SEC)};
  nanosleep(&ts, NULL);
}

#endif
