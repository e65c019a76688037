/*
 * fuzz.h — what every libFuzzer target in tests/fuzz/ shares.
 *
 * A target is tests/fuzz/fuzz_<name>.c defining LLVMFuzzerTestOneInput();
 * the Makefile builds it with clang -fsanitize=fuzzer,address,undefined
 * against common/ compiled the same way (build/fuzz/), and `make fuzz`
 * runs it on a scratch copy of tests/fuzz/corpus/<name>/ (with
 * tests/fuzz/fuzz_<name>.dict and the libFuzzer flags in
 * tests/fuzz/fuzz_<name>.options when they exist).
 *
 * FUZZ_CHECK is the targets' assert: it is never compiled out, and a
 * failure aborts, which libFuzzer reports as a crash with the input saved.
 */
#ifndef IMAPMUX_FUZZ_H
#define IMAPMUX_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <sanitizer/asan_interface.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond, what)                                                                     \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s (%s)\n", __FILE__, __LINE__, \
			        (what), #cond);                                                    \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/*
 * Mark bytes the code under test must not read (ASan reports any access).
 * ASan works in 8-byte granules: the end of a region is exact, the start is
 * rounded up, so a few bytes just before an unpoisoned range stay readable.
 */
#define FUZZ_POISON(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define FUZZ_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))

#endif
