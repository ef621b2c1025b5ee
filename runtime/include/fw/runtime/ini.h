/* fw/runtime/ini.h - reading the INI text of a configuration, as
 * checkpoints store it ("config" attribute) and run directories keep it
 * (config.ini): "[section]" lines and "key = value" lines; blank lines and
 * comments (# or ;) skipped; keys before any section are in section "". */
#ifndef FW_RUNTIME_INI_H
#define FW_RUNTIME_INI_H

#ifdef __cplusplus
extern "C" {
#endif

/* Calls fn(arg, section, key, value) for each "key = value" line of text,
 * and fn(arg, section, NULL, NULL) at each section header. */
void fw_rt_ini_each(const char *text,
		    void (*fn)(void *arg, const char *section, const char *key, const char *value),
		    void *arg);

/* The value of key in section of text (malloc'd), NULL if absent. Section
 * "run" also finds keys before any section. */
char *fw_rt_ini_lookup(const char *text, const char *section, const char *key);

#ifdef __cplusplus
}
#endif
#endif
