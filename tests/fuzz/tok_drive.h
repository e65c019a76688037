/*
 * tok_drive — the driver shared by the imap_tok fuzz targets (one per
 * direction). See tok_drive.c for the input layout and what is checked.
 */
#ifndef IMAPMUX_TOK_DRIVE_H
#define IMAPMUX_TOK_DRIVE_H

#include <stddef.h>
#include <stdint.h>

#include "imap_tok.h"

/* Bytes of parameters (limits, read sizes...) before the stream itself. */
#define TOK_PARAM_BYTES 11

/* Run data[0..size) through a tokenizer of direction dir; abort() on any
 * broken promise. */
void tok_drive(enum imap_tok_dir dir, const uint8_t *data, size_t size);

#endif
