struct Payment {
    order: String,
}

#[kq::consumer(conf = "KqConsumerConf")]
async fn payment_success(kq::Json(payment): kq::Json<Payment>) {
    println!("{}", payment.order);
}

fn main() {}
