mod harness;

use harness::zk::Zk;

#[test]
fn harness_smoke() {
    let zk = Zk::standalone();
    let rt = harness::runtime();
    rt.block_on(async {
        let c = zookeeper_client::Client::connect(&zk.connect_string())
            .await
            .unwrap();
        assert_eq!(
            c.list_children("/").await.unwrap(),
            vec!["zookeeper".to_string()]
        );
    });
    zk.kill_member(0);
    zk.restart_member(0);
    let e = Zk::ensemble();
    e.kill_member(1);
    e.restart_member(1);
    println!("{}", e.connect_string());
}
