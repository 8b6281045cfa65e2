"""The job sandbox: what contains a job process, built from what the OS allows (see each module).

jobside.py   the steps a job process applies to itself before it opens the model (namespaces, hidden
             files, read-only filesystem, Landlock, no capabilities)
probe.py     tries every step once at agent start, in a throwaway process, to learn which ones work here
cgroup.py    one cgroup v2 per job (agent side): every process found and killed, kernel memory/pids limits
tree.py      every process of a job and its memory, read cheaply from procfs; the agent as subreaper
policy.py    turns all of that into the controls reported in device info and in every result
syscalls.py  ctypes wrappers of the Linux calls none of the above can make from the standard library
"""
