/* harness.h - shared helpers for the Check test suites. */
#ifndef FW_TEST_HARNESS_H
#define FW_TEST_HARNESS_H
#include "fw/fw.h"
#endif
