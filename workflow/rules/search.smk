rule search:
    input:
        unpack(search_inputs),
    output:
        f"{RES}/policies/{{policy}}/policy.yaml",
    params:
        spec=search_spec,
        importance=importance_arg,
    benchmark:
        f"{RES}/benchmarks/search/{{policy}}.tsv"
    log:
        f"{RES}/logs/search/{{policy}}.log",
    threads: res("search", "threads")
    resources:
        mem_mb=res("search", "mem_mb"),
        runtime=res("search", "runtime"),
    shell:
        "{PY} {input.script} --spec {params.spec:q} --threads {threads}"
        " {params.importance} --out {output} > {log} 2>&1"
