/*
 * fuzz_tok_responses — common/imap_tok on server streams (RESPONSES, where
 * status and continuation lines are free text), driven and checked by
 * tok_drive.c.
 */
#include "fuzz.h"
#include "tok_drive.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	tok_drive(IMAP_TOK_RESPONSES, data, size);
	return 0;
}
