rule finetune:
    input:
        script=stage("finetune"),
        policy=f"{RES}/policies/{{policy}}/policy.yaml",
        fp32=f"{RES}/pretrain/model.pt",
    output:
        f"{RES}/policies/{{policy}}/model.pt",
    params:
        spec=finetune_spec,
    log:
        f"{RES}/logs/finetune/{{policy}}.log",
    threads: res("finetune", "threads")
    resources:
        gpu=res("finetune", "gpu"),
        mem_mb=res("finetune", "mem_mb"),
        runtime=res("finetune", "runtime"),
    shell:
        "{PY} {input.script} --spec {params.spec:q} --threads {threads}"
        " --policy {input.policy} --fp32 {input.fp32} --out {output} > {log} 2>&1"
