/*
 * fuzz_tok_commands — common/imap_tok on client streams (COMMANDS), driven
 * and checked by tok_drive.c.
 */
#include "fuzz.h"
#include "tok_drive.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	tok_drive(IMAP_TOK_COMMANDS, data, size);
	return 0;
}
