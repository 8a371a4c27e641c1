/* A shared library that is not a plugin. */
int not_a_plugin(void) { return 1; }
