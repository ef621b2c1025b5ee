/* fw/runtime/ini.h - the one INI reader of fw: --config files, sweep files,
 * and the configuration text checkpoints store ("config" attribute) and run
 * directories keep (config.ini).
 *
 * Syntax (libinih's, which fw used before): "[section]" lines and
 * "key = value" (or "key: value") lines, whitespace around names and values
 * trimmed; lines starting with ';' or '#' are comments, and " ;" starts a
 * comment after a value; a UTF-8 BOM is skipped; keys before any section are
 * in section "". Unlike libinih, lines have no length limit (Debian's
 * libinih cuts them at 199 bytes and reads the rest as another line), the
 * callback gets the line number, and an indented line is an ordinary line,
 * not the continuation of the previous value. */
#ifndef FW_RUNTIME_INI_H
#define FW_RUNTIME_INI_H

#ifdef __cplusplus
extern "C" {
#endif

/* Called for each "key = value" line, and with key and value NULL at each
 * "[section]" line. line counts from 1. Returns nonzero to accept the
 * entry, 0 to mark its line as the error. */
typedef int (*fw_rt_ini_fn)(void *arg, const char *section, const char *key,
			    const char *value, int line);

/* Calls fn for every entry of text. Returns 0, or the number of the first
 * line that is malformed (no '=' or ':', no closing ']') or that fn
 * refused; reading goes on past such lines. -2: out of memory. */
int fw_rt_ini_parse(const char *text, fw_rt_ini_fn fn, void *arg);

/* The same for the file at path; -1 if it cannot be read. */
int fw_rt_ini_parse_file(const char *path, fw_rt_ini_fn fn, void *arg);

/* The value of key in section of text (malloc'd), NULL if absent. Section
 * "run" also finds keys before any section. */
char *fw_rt_ini_lookup(const char *text, const char *section, const char *key);

#ifdef __cplusplus
}
#endif
#endif
