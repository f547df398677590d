use dsu_tests::*;

#[test]
fn code_only_smoke() {
    let v1 = program("app", "v1");
    let exe = build_base(&v1).unwrap();
    let pkg = build_patch(&v1, &program("app", "v2-code")).unwrap();
    let p = Process::start(&exe).unwrap();
    let mut c = p.connect().unwrap();
    assert_eq!(c.cmd("add 5").unwrap(), "5");
    assert_eq!(c.cmd("version").unwrap(), "v1");
    let rec = p.apply(&pkg, None).unwrap();
    println!("{rec:#?}");
    assert_eq!(c.cmd("version").unwrap(), "v2 total=5");
    assert_eq!(c.cmd("add 1").unwrap(), "6");
}
