/* jsonfile.c - JSON documents written the way every fwrun file is written
 * (fw_file_write_atomic): Hugging Face config.json, adapter_config.json. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fwrun.h"

enum fw_status write_json_file(const char *path, const void *json, struct fw_err *err)
{
	char *text = json ? json_dumps(json, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
	if (!text)
		return fw_errorf(err, FW_ERR_NOMEM, "%s: cannot write: out of memory", path);
	enum fw_status st = fw_file_write_atomic(path, text, strlen(text), err);
	free(text);
	return st;
}
